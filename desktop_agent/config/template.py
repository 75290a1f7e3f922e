"""The commented configuration file written on first start.

It is rendered from a template rather than with tomli_w so that the comments
explaining each key reach the user. The loader's tests load it back.
"""

from __future__ import annotations

import dataclasses

from desktop_agent.config.model import (
    AgentConfig,
    BackupConfig,
    RepositoryConfig,
    ScheduleConfig,
    UiConfig,
    UpkeepConfig,
)

__all__ = ["render_default", "toml_string"]

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string, quotes included."""
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_scalar(value: object) -> str:
    """A bool as TOML's true/false; an int or a string (written inside quotes
    by the template) as it is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _toml_array(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(toml_string(v) for v in values) + "]"


_TEMPLATE = """\
# desktop-agent configuration
#
# Written on first start; edit it and restart the agent. Relative paths are
# relative to the folder of this file; "~" and environment variables ($HOME,
# ${{XDG_DATA_HOME}}) are expanded. When desktop-agent itself saves this file
# (for example after changing the token) it keeps every value but drops these
# comments.

[agent]
# host:port of the /ws endpoint the backup server connects to. 127.0.0.1
# accepts connections from this machine only; 0.0.0.0 from every network
# interface. IPv6: "[::1]:8080".
listen = {listen}

# Every /ws client must send "Authorization: Bearer <token>". Generated at
# random on first start; `desktop-agent token` prints it. Keep it secret.
token = {token}

# Browser pages allowed to connect to /ws, as origins: "https://host[:port]",
# e.g. ["https://backup.example.com"]. Empty: no browser may connect
# (programs that send no Origin header are not affected).
allowed_origins = {allowed_origins}

# Serve /ws over TLS (wss://): give both a PEM certificate and its key, or
# neither.
# tls_cert = "/path/to/cert.pem"
# tls_key = "/path/to/key.pem"

# How many /ws connections may be open at once (1-65535); one more is refused
# with HTTP 503. Connections still in their handshake count too. The agent
# may allow fewer when the open-file limit (ulimit -n) leaves no room for
# them beside a running backup; it says so in its log.
max_connections = {max_connections}

# Whether a /ws client (the backup server) may restore files onto this
# computer with restore:start (true or false). Such a restore always goes into
# a new folder (in Downloads, or the home folder), never over existing files,
# and the tray says so. Restores started in the tray are not affected.
allow_remote_restore = {allow_remote_restore}

[repository]
# Where the backups are stored, in restic's repository format, so restic can
# read it too: a local directory (on an external disk, say), or a server in
# restic's syntax:
#   rest:https://user@host:8000/path     (rest-server, rclone serve restic)
#   sftp:user@host:/path  or  sftp://user@host:2222//path
#   s3:https://host:9000/bucket/prefix   (S3, MinIO, Ceph, B2, Wasabi)
# Server credentials never go here: RESTIC_REST_PASSWORD, AWS_ACCESS_KEY_ID
# and AWS_SECRET_ACCESS_KEY, or the settings window (OS keyring); SFTP uses
# your SSH keys and ~/.ssh/known_hosts. `desktop-agent init` creates it.
path = {repository_path}

# A file whose first line is the repository password. The password is looked
# for in the environment variable DESKTOP_AGENT_PASSWORD first, then in this
# file, then in the OS keyring (service "desktop-agent", user name = the
# repository path). Set to "" to use only the variable and the keyring.
password_file = {password_file}

[backup]
# Files and folders to back up.
sources = {sources}

# Files and folders to leave out, as restic --exclude patterns: "*" matches
# within one path element, "**" any number of them; a pattern without "/"
# matches the name anywhere.
exclude = {exclude}

# The running agent starts a backup when the last one is older than this many
# minutes (checked every minute, also after the laptop wakes up); 0 = only
# when asked (tray, backup server, `desktop-agent backup`).
interval_minutes = {interval_minutes}

[schedule]
# When the agent backs up on its own, and when it waits (docs/scheduling.md).
# A backup missed while the laptop slept or was off runs once soon after it
# wakes; a failed one is retried after 5, 10, 20... minutes up to
# max_retry_minutes. Backups you start yourself ignore these conditions.
# "HH:MM": once a day at this time instead of every interval_minutes; "" = off.
daily_at = "{daily_at}"
# A scheduled backup starts up to this many minutes late (spreads the load
# of many machines on one server).
random_delay_minutes = {random_delay_minutes}
# After the laptop wakes up, wait this many seconds (and for the network, when
# the repository is on a server) before a missed backup starts.
wake_delay_seconds = {wake_delay_seconds}
# No scheduled backups on battery at all (true), or only below this percentage
# (min_battery_percent; 0 = at any level). A backup already running pauses
# when this turns true and resumes on AC.
skip_on_battery = {skip_on_battery}
min_battery_percent = {min_battery_percent}
# No scheduled backups over a metered connection (a phone's hotspot, say).
skip_on_metered = {skip_on_metered}
# "HH:MM-HH:MM": no scheduled backups in this window ("22:00-07:00" crosses
# midnight); a running one pauses until it ends. "" = none.
quiet_hours = "{quiet_hours}"
# A scheduled backup stops after this many minutes and the next run continues
# where it stopped (nothing stored is lost); 0 = no limit.
max_runtime_minutes = {max_runtime_minutes}
# Keep the machine awake while a backup runs (otherwise sleep waits only the
# few seconds the backup needs to save its place, and it resumes after wake).
keep_awake = {keep_awake}
# The tray warns when the last successful backup is older than this; 0 = never.
stale_after_days = {stale_after_days}
max_retry_minutes = {max_retry_minutes}

[upkeep]
# Repository maintenance as jobs of the agent, only on AC and unmetered networks.
# forget = true: after a successful backup (at most once a day) forget the
# snapshots of this computer the keep_* policy does not keep, and prune.
forget = {forget}
keep_last = {keep_last}
keep_hourly = {keep_hourly}
keep_daily = {keep_daily}
keep_weekly = {keep_weekly}
keep_monthly = {keep_monthly}
keep_yearly = {keep_yearly}
# Once a week read one part in check_subsets of the repository's data and
# verify it (restic's check --read-data-subset n/t, n rotating: every pack is
# read once in check_subsets weeks); 0 = no scheduled check.
check_subsets = {check_subsets}

[server]
# The backup server this agent dials out to (it need not be reachable from
# outside: a laptop behind a router or on a hotspot connects out). "" = off.
# Over that connection the agent speaks the /ws protocol (docs/protocol.md).
# The credential is never written here: $DESKTOP_AGENT_SERVER_TOKEN, a
# token_file, or the settings window (OS keyring).
url = ""
# token_file = "server-token"
# ca_file = "backup-ca.pem"    # trust this CA instead of the system's
# ws:// (no TLS) only to this machine, unless this is true
allow_insecure = false

[ui]
# Show a notification when a backup completes (true or false). Failures are
# always shown.
notify_success = {notify_success}
"""


def render_default(
    token: str, sources: tuple[str, ...] | None = None, exclude: tuple[str, ...] | None = None
) -> str:
    """The text of a fresh configuration file carrying ``token`` and the default values
    (``sources`` and ``exclude`` instead of the built-in defaults when given)."""
    agent = AgentConfig(token=token)
    repository = RepositoryConfig()
    backup = BackupConfig()
    if sources is not None:
        backup = dataclasses.replace(backup, sources=sources)
    if exclude is not None:
        backup = dataclasses.replace(backup, exclude=exclude)
    ui = UiConfig()
    return _TEMPLATE.format(
        listen=toml_string(agent.listen),
        token=toml_string(agent.token),
        allowed_origins=_toml_array(agent.allowed_origins),
        max_connections=agent.max_connections,
        allow_remote_restore="true" if agent.allow_remote_restore else "false",
        repository_path=toml_string(repository.path),
        password_file=toml_string(repository.password_file or ""),
        sources=_toml_array(backup.sources),
        exclude=_toml_array(backup.exclude),
        interval_minutes=backup.interval_minutes,
        **{k: _toml_scalar(v) for k, v in dataclasses.asdict(ScheduleConfig()).items()},
        **{k: _toml_scalar(v) for k, v in dataclasses.asdict(UpkeepConfig()).items()},
        notify_success="true" if ui.notify_success else "false",
    )
