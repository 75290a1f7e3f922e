"""Syntax of the network values in the configuration: ``listen`` and browser origins.

The functions raise ``ValueError`` whose message is the problem alone
(``port 99999 is out of range 1-65535``); the loader adds the file and key.
"""

from __future__ import annotations

import ipaddress
import json
import re
from urllib.parse import urlsplit

__all__ = ["is_hostname", "normalize_origin", "parse_listen"]

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _q(value: str) -> str:
    """``value`` quoted as in the TOML file, for messages."""
    return json.dumps(value, ensure_ascii=False)


def is_hostname(host: str) -> bool:
    """True when ``host`` is an IPv4 address or an RFC 1123 host name (ASCII only)."""
    if not host or len(host) > 253:
        return False
    labels = host.removesuffix(".").split(".")
    if not all(_LABEL.match(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):
        # All-numeric: only a real dotted IPv4 address makes sense.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
    return True


def _parse_port(text: str) -> int:
    if not text:
        raise ValueError("the port is missing (write host:port, e.g. 127.0.0.1:8080)")
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"port {_q(text)} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return port


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[ipv6]:port``) into the host to bind and the port.

    The host comes back without brackets (``"::1"``), ready for a socket.
    """
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise ValueError(f"{_q(value)} has no closing ] (write e.g. [::1]:8080)")
        host, rest = value[1:close], value[close + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"{_q(value)} is not host:port (write e.g. [::1]:8080)")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_q(host)} is not an IPv6 address") from None
        return host, _parse_port(rest[1:])
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError(f"{_q(value)} is not host:port (write e.g. 127.0.0.1:8080)")
    if ":" in host:
        raise ValueError(f"IPv6 addresses go in brackets: write [{host}]:{port_text}")
    if not host:
        raise ValueError(
            f"the host is missing in {_q(value)} (write 127.0.0.1 for this machine only, "
            "0.0.0.0 for every interface)"
        )
    if not is_hostname(host):
        raise ValueError(f"{_q(host)} is not a valid host name or IPv4 address")
    return host, _parse_port(port_text)


def normalize_origin(value: str) -> str:
    """Check a browser origin and return it the way browsers send it.

    Accepts ``http(s)://host[:port]`` (a trailing ``/`` is tolerated). The
    result is lower-case, without the trailing slash and without a default
    port (80 for http, 443 for https), because that is what a browser puts
    in its ``Origin`` header and origins are compared as strings.
    """
    if value in ("*", "null"):
        raise ValueError(f"{_q(value)} is not allowed; list each origin, e.g. https://example.com")
    if "://" not in value:
        raise ValueError(f"{_q(value)} is not an origin (write http(s)://host[:port])")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{_q(value)} is not an origin: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{_q(value)} must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{_q(value)} must not contain a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError(f"{_q(value)} must be scheme://host[:port] only, without a path or query")
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"{_q(value)} has no host")
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_q(value)}: {_q(host)} is not an IPv6 address") from None
        host = f"[{host}]"
    elif not is_hostname(host):
        raise ValueError(
            f"{_q(value)}: {_q(host)} is not a valid host name "
            "(write international names in their xn-- form)"
        )
    if port is not None and port == 0:
        raise ValueError(f"{_q(value)}: port 0 is out of range 1-65535")
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"
