"""The ``/ws`` protocol: message dataclasses and their JSON codec (sans-I/O)."""

from __future__ import annotations

from .codec import ProtocolError, decode_command, decode_event, encode_command, encode_event
from .messages import *  # noqa: F403
from .messages import __all__ as _messages

__all__ = [
    "ProtocolError",
    "decode_command",
    "decode_event",
    "encode_command",
    "encode_event",
    *_messages,
]
