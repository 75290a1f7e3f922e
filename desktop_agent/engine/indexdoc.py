"""The JSON of an index file, decoded into typed objects and checked in C.

An index file is ``{"supersedes": [...], "packs": [{"id": ..., "blobs":
[{"id", "type", "offset", "length", "uncompressed_length"?}]}]}``, or the
pre-0.8 bare list of packs. msgspec decodes it straight into the classes
below and checks every field's type and range as it goes: 0.13-0.18 s a
million blobs, where ``json.loads`` alone took 0.62-0.94 s (docs/design.md,
"The master index in memory"). Numbers must be JSON integers, as restic's
decoder requires: ``1.0``, ``"1"`` and ``true`` are malformed. Unknown
fields are skipped (their text is not checked for valid UTF-8: it is never
read). What the schema cannot say (that an id is 32 bytes of hex) the
caller checks.

Imported on first use: a run that loads no index file never pays for it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .crypto import OVERHEAD
from .errors import invalid_json, malformed
from .limits import MAX_PACK_OFFSET

__all__ = ["Blob", "Pack", "read_index"]

_UINT32 = 1 << 32


class Blob(msgspec.Struct, gc=False):
    """One blob of a pack, its fields checked against the format's ranges."""

    id: str
    type: Literal["data", "tree"]
    offset: Annotated[int, msgspec.Meta(ge=0, lt=MAX_PACK_OFFSET)]
    # a pack header holds lengths as uint32
    length: Annotated[int, msgspec.Meta(ge=OVERHEAD, lt=_UINT32)]
    uncompressed_length: Annotated[int, msgspec.Meta(ge=0, lt=_UINT32)] | None = None


class Pack(msgspec.Struct, gc=False):
    """One pack and its blobs."""

    id: str
    blobs: list[Blob] | None = None


class _Document(msgspec.Struct, gc=False):
    supersedes: list[str] | None = None
    packs: list[Pack] | None = None


_SCHEMA = _Document | list[Pack]  # the legacy format is a bare list of packs
_DECODER = msgspec.json.Decoder(_SCHEMA)


def read_index(
    doc: bytes | bytearray | memoryview | Any, what: str = "index"
) -> tuple[list[str], list[Pack]]:
    """An index document's supersedes list (hex, not yet parsed) and packs.

    ``doc`` is the file's JSON, or a document already parsed into Python
    objects (checked the same way). Raises :class:`IntegrityError`, its
    message starting with ``what``, for invalid JSON or a field of the wrong
    type or out of range.
    """
    try:
        if isinstance(doc, bytes | bytearray | memoryview):
            top = _DECODER.decode(doc if not isinstance(doc, memoryview) else doc.tobytes())
        else:
            top = msgspec.convert(doc, _SCHEMA)
    except msgspec.ValidationError as exc:
        # "<problem> - at `$.packs[0]...`": the place first, so that a cut
        # of a long problem (a huge refused value) keeps it
        problem, at, place = str(exc).rpartition(" - at `")
        if at and place.startswith("$"):
            exc = msgspec.ValidationError(f"at {place.rstrip('`')}: {problem}")
        raise malformed(what, exc) from None
    except (msgspec.DecodeError, RecursionError, MemoryError) as exc:
        raise invalid_json(what, exc) from None
    if isinstance(top, list):
        return [], top
    return top.supersedes or [], top.packs or []
