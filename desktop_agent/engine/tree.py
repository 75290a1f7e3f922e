"""Tree blobs: directory listings in restic's JSON encoding.

A tree is ``{"nodes":[...]}\\n`` with nodes sorted by raw name. Each node is
encoded as restic's ``Node`` struct through Go's ``encoding/json`` (restic's
field order and ``omitempty`` rules), names pass through ``strconv.Quote``
and times are RFC 3339 with nanoseconds (docs/design.md, section 1,
"Trees"). Fields we do not model (``generic_attributes``, future additions)
are kept verbatim when a node is decoded and written back.
"""

from __future__ import annotations

import base64
import json
import operator
import os
import stat as st
from dataclasses import dataclass, field
from typing import Any

from .errors import IntegrityError, malformed
from .gocompat import format_time, go_quote_name, go_unquote_name, json_string, parse_time
from .ids import BlobId, parse_id

__all__ = [
    "Node",
    "encode_tree",
    "decode_tree",
    "decode_tree_by_node",
    "decode_name",
    "decode_time",
    "decode_link_target",
    "go_mode",
    "unix_mode",
    "MODE_DIR",
    "MODE_SYMLINK",
    "NodeType",
]

# Go's os.FileMode bits.
MODE_DIR = 1 << 31
MODE_APPEND = 1 << 30
MODE_EXCLUSIVE = 1 << 29
MODE_TEMPORARY = 1 << 28
MODE_SYMLINK = 1 << 27
MODE_DEVICE = 1 << 26
MODE_NAMED_PIPE = 1 << 25
MODE_SOCKET = 1 << 24
MODE_SETUID = 1 << 23
MODE_SETGID = 1 << 22
MODE_CHAR_DEVICE = 1 << 21
MODE_STICKY = 1 << 20
MODE_IRREGULAR = 1 << 19
MODE_PERM = 0o777


class NodeType:
    """The node type strings restic uses."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    DEV = "dev"
    CHARDEV = "chardev"
    FIFO = "fifo"
    SOCKET = "socket"
    IRREGULAR = "irregular"
    # not restic's: a node of a damaged or hostile tree that could not be decoded
    INVALID = "invalid"


_GO_MODES: dict[int, int] = {}


def go_mode(unix: int) -> int:
    """Convert a ``st_mode`` into Go's FileMode, masked as restic stores it."""
    # a backup meets a handful of distinct modes, once per file each
    mode = _GO_MODES.get(unix)
    if mode is None:
        mode = _GO_MODES[unix] = _go_mode(unix)
    return mode


def _go_mode(unix: int) -> int:
    mode = unix & MODE_PERM
    fmt = st.S_IFMT(unix)
    if fmt == st.S_IFDIR:
        mode |= MODE_DIR
    elif fmt == st.S_IFLNK:
        mode |= MODE_SYMLINK
    elif fmt == st.S_IFBLK:
        mode |= MODE_DEVICE
    elif fmt == st.S_IFCHR:
        mode |= MODE_DEVICE | MODE_CHAR_DEVICE
    elif fmt == st.S_IFIFO:
        mode |= MODE_NAMED_PIPE
    elif fmt == st.S_IFSOCK:
        mode |= MODE_SOCKET
    elif fmt != st.S_IFREG:
        mode |= MODE_IRREGULAR
    if unix & st.S_ISUID:
        mode |= MODE_SETUID
    if unix & st.S_ISGID:
        mode |= MODE_SETGID
    if unix & st.S_ISVTX:
        mode |= MODE_STICKY
    return mode


def unix_mode(gomode: int) -> int:
    """Permission bits (incl. setuid/setgid/sticky) of a Go FileMode."""
    mode = gomode & MODE_PERM
    if gomode & MODE_SETUID:
        mode |= st.S_ISUID
    if gomode & MODE_SETGID:
        mode |= st.S_ISGID
    if gomode & MODE_STICKY:
        mode |= st.S_ISVTX
    return mode


_KNOWN = frozenset(
    "name type mode mtime atime ctime uid gid user group inode device_id size links "
    "linktarget linktarget_raw extended_attributes device content subtree error".split()
)


@dataclass(slots=True)
class Node:
    """One entry of a tree. Times are nanoseconds since the epoch."""

    name: bytes
    type: str
    mode: int = 0
    mtime: int = 0
    atime: int = 0
    ctime: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    inode: int = 0
    device_id: int = 0
    size: int = 0
    links: int = 0
    linktarget: bytes = b""
    xattrs: list[tuple[str, bytes]] = field(default_factory=list)
    device: int = 0
    content: list[BlobId] | None = None
    subtree: BlobId | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # the original time strings, so a decoded node re-encodes byte-identically
    time_text: tuple[str, str, str] | None = None
    # why the node could not be decoded (type INVALID); empty for a good node
    invalid: str = ""

    def encode(self) -> str:
        """The node as Go's ``json.Marshal`` writes restic's Node struct."""
        # Hot path of every backup: one f-string for the fields every node has.
        if self.time_text is not None:
            mt, at, ct = self.time_text
        else:
            mt = format_time(self.mtime)
            at = mt if self.atime == self.mtime else format_time(self.atime)
            ct = mt if self.ctime == self.mtime else format_time(self.ctime)
        mode = f',"mode":{self.mode}' if self.mode else ""
        # the owner's part: the same few owners in every tree, formatted once each
        owner_key = (self.uid, self.gid, self.user, self.group)
        owner = _owner_cache.get(owner_key)
        if owner is None:
            owner = _owner_text(*owner_key)
        out = (
            f'{{"name":{json_string(go_quote_name(self.name))},"type":"{self.type}"{mode}'
            f',"mtime":"{mt}","atime":"{at}","ctime":"{ct}"{owner}'
        )
        if self.inode:
            out += f',"inode":{self.inode}'
        if self.device_id:
            out += f',"device_id":{self.device_id}'
        if self.size:
            out += f',"size":{self.size}'
        if self.links:
            out += f',"links":{self.links}'
        if self.linktarget:
            text = self.linktarget.decode("utf-8", "surrogateescape")
            out += ',"linktarget":' + json_string(text)
            try:
                self.linktarget.decode("utf-8")
            except UnicodeDecodeError:
                raw = base64.b64encode(self.linktarget).decode()
                out += f',"linktarget_raw":"{raw}"'
        if self.xattrs:
            attrs = ",".join(
                '{"name":' + json_string(n) + ',"value":"' + base64.b64encode(v).decode() + '"}'
                for n, v in self.xattrs
            )
            out += ',"extended_attributes":[' + attrs + "]"
        extra = self.extra
        if extra and "generic_attributes" in extra:
            out += ',"generic_attributes":' + _go_json(extra["generic_attributes"])
        if self.device:
            out += f',"device":{self.device}'
        content = self.content
        if content is None:
            out += ',"content":null'
        elif len(content) == 1:  # most files: one blob
            out += ',"content":["' + content[0].hex() + '"]'
        elif content:
            out += ',"content":["' + '","'.join([b.hex() for b in content]) + '"]'
        else:
            out += ',"content":[]'
        if self.subtree is not None:
            out += f',"subtree":"{self.subtree.hex()}"'
        if self.error:
            out += ',"error":' + json_string(self.error)
        if extra:
            for key, value in extra.items():
                if key != "generic_attributes":
                    out += "," + json_string(key) + ":" + _go_json(value)
        return out + "}"

    @classmethod
    def decode(cls, obj: dict[str, Any]) -> Node:
        """Build a node from the decoded JSON object of a tree.

        Every value is checked here, where it enters the program: a name or
        link target a file system cannot hold, a number that overflows the
        system call it will reach, a time no clock shows. Raises
        :class:`IntegrityError` naming the field; :func:`decode_tree` turns
        that into an :meth:`undecodable` node so the rest of the tree is usable.
        """
        try:
            if not isinstance(obj, dict):
                raise TypeError("a node is not a JSON object")
            name = decode_name(obj["name"])
            mt, at, ct = obj.get("mtime"), obj.get("atime"), obj.get("ctime")
            content = obj.get("content")
            subtree = obj.get("subtree")
            target = decode_link_target(obj.get("linktarget"), obj.get("linktarget_raw"))
            node = cls(
                name=name,
                type=_str(obj["type"], "type"),
                mode=_uint(obj, "mode", 32),
                mtime=(mtime := decode_time(mt, "mtime")),
                # most nodes carry one time three times: parse it once
                atime=mtime if at == mt else decode_time(at, "atime"),
                ctime=mtime if ct == mt else decode_time(ct, "ctime"),
                uid=_uint(obj, "uid", 32),
                gid=_uint(obj, "gid", 32),
                user=_str(obj.get("user") or "", "user"),
                group=_str(obj.get("group") or "", "group"),
                inode=_uint(obj, "inode", 64),
                device_id=_uint(obj, "device_id", 64),
                size=_uint(obj, "size", 63),
                links=_uint(obj, "links", 64),
                linktarget=target,
                xattrs=[
                    (str(a["name"]), base64.b64decode(a["value"] or ""))
                    for a in obj.get("extended_attributes") or ()
                ],
                device=_uint(obj, "device", 64),
                content=None if content is None else [BlobId(parse_id(c)) for c in content],
                subtree=None if subtree is None else BlobId(parse_id(subtree)),
                error=str(obj.get("error") or ""),
                extra={k: v for k, v in obj.items() if k not in _KNOWN},
                time_text=(mt, at, ct) if mt and at and ct else None,
            )
        except (KeyError, ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise malformed("tree node", exc) from None
        return node

    @classmethod
    def undecodable(cls, obj: Any, reason: str) -> Node:
        """A node that failed :meth:`decode`: what could be read of it, and why.

        Its references (content, subtree) are kept where they parse, so that
        prune still counts the data they name as used; everything else must
        treat the node as an error for its entry.
        """
        fields = obj if isinstance(obj, dict) else {}
        try:
            name = go_unquote_name(fields["name"]) if isinstance(fields.get("name"), str) else b""
        except ValueError:
            name = b""
        node = cls(name=name, type=NodeType.INVALID, invalid=reason)
        content = fields.get("content")
        if isinstance(content, list):
            node.content = [BlobId(i) for i in _ids(content)]
        subtree = fields.get("subtree")
        if isinstance(subtree, str):
            ids = _ids([subtree])
            node.subtree = BlobId(ids[0]) if ids else None
        return node


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} is not a string")
    return value


def decode_name(value: Any) -> bytes:
    """A node's name as the file system holds it; ValueError for one it cannot."""
    name = go_unquote_name(_str(value, "name"))
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise ValueError(f'name "{os.fsdecode(name)}" cannot be a file name')
    return name


def _uint(obj: dict[str, Any], key: str, bits: int) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        # Go's encoding/json writes whole numbers; a float or string is not one
        raise TypeError(f"{key} is not an integer")
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{key} {value} is out of range")
    return value


# Go's time.Time covers years 0-9999 in RFC 3339; beyond that no file system has a time
_MIN_TIME = -62_167_219_200 * 10**9
_MAX_TIME = 253_402_300_800 * 10**9


def decode_link_target(text: Any, raw: Any) -> bytes:
    """A symlink's target from ``linktarget`` (text) or ``linktarget_raw``
    (base64, for a target that is not UTF-8), which wins when present."""
    if raw is not None:
        target = base64.b64decode(_str(raw, "linktarget_raw"), validate=True)
    else:
        target = _str(text or "", "linktarget").encode("utf-8", "surrogateescape")
    if b"\0" in target:
        raise ValueError("linktarget contains a NUL byte")
    return target


def decode_time(value: Any, what: str) -> int:
    """A node's time (RFC 3339) in nanoseconds; 0 for none."""
    if not value:
        return 0
    try:
        ns = parse_time(_str(value, what))
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{what}: {exc}") from None
    if not _MIN_TIME <= ns < _MAX_TIME:
        raise ValueError(f"{what} {value!r} is out of range")
    return ns


def _ids(values: list[Any]) -> list[bytes]:
    out = []
    for v in values:
        try:
            out.append(parse_id(v))
        except ValueError:
            continue
    return out


_owner_cache: dict[tuple[int, int, str, str], str] = {}


def _owner_text(uid: int, gid: int, user: str, group: str) -> str:
    """``,"uid":..,"gid":..`` and the names when known, memoized."""
    text = f',"uid":{uid},"gid":{gid}'
    if user:
        text += ',"user":' + json_string(user)
    if group:
        text += ',"group":' + json_string(group)
    if len(_owner_cache) < 10_000:
        _owner_cache[(uid, gid, user, group)] = text
    return text


def _go_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_by_name = operator.attrgetter("name")


def encode_tree(nodes: list[Node]) -> bytes:
    """Serialize nodes (sorted by raw name, which must be unique)."""
    names = [n.name for n in nodes]
    if any(a >= b for a, b in zip(names, names[1:], strict=False)):  # listings come sorted
        nodes = sorted(nodes, key=_by_name)
        for a, b in zip(nodes, nodes[1:], strict=False):
            if a.name == b.name:
                raise IntegrityError(f'duplicate name "{os.fsdecode(a.name)}" in tree')
    return ('{"nodes":[' + ",".join(n.encode() for n in nodes) + "]}\n").encode("utf-8")


def decode_tree(data: bytes | bytearray | memoryview) -> list[Node]:
    """Parse a tree blob's plaintext.

    A tree that is not a JSON document of nodes raises
    :class:`IntegrityError`. A node within it that fails validation becomes
    an :meth:`Node.undecodable` node, as does a second node of the same name, so
    readers report that one entry and go on with the others.

    Trees are decoded in C (:mod:`.treedoc`) where that gives the same
    nodes; the others by :func:`decode_tree_by_node`.
    """
    from .treedoc import decode_nodes  # noqa: PLC0415 - msgspec only once a tree is read

    fast = decode_nodes(data)
    return fast if fast is not None else decode_tree_by_node(data)


def decode_tree_by_node(data: bytes | bytearray | memoryview) -> list[Node]:
    """:func:`decode_tree` with ``json`` and each node checked in Python."""
    try:
        doc = json.loads(bytes(data))
        raw_nodes = doc["nodes"]
        if raw_nodes is None:
            return []
        if not isinstance(raw_nodes, list):
            raise TypeError("nodes is not a list")
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise malformed("tree", exc) from None
    nodes = []
    names: set[bytes] = set()
    for obj in raw_nodes:
        try:
            node = Node.decode(obj)
        except IntegrityError as exc:
            node = Node.undecodable(obj, str(exc))
        except RecursionError:
            node = Node.undecodable(obj, "tree node is nested too deeply")
        else:
            if node.name in names:
                node = Node.undecodable(obj, "a second entry of the same name in one directory")
        names.add(node.name)
        nodes.append(node)
    return nodes
