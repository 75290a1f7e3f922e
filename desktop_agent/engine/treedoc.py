"""A tree blob's JSON decoded and checked in C: the fast path of :func:`.tree.decode_tree`.

:func:`.tree.decode_tree` reads a tree with ``json.loads`` and then checks
each node field by field in Python (:meth:`.tree.Node.decode`): 9.6-10.1 us
a node (5.9 here), a quarter of the interpreter's time when restoring many
small files. Here msgspec
decodes the tree straight into the typed structs below, checking each
field's type and range as it goes, and the nodes are made from them; the
checks msgspec cannot express (a name a file system cannot hold, a time, an
id) are the same functions the slow path calls.

Only what both paths read alike is taken here. A tree with anything else
(a field we do not know, which must be kept to re-encode the node
byte-identically; a node that fails a check, which the slow path turns into
one undecodable entry; two entries of one name; JSON that msgspec reads
differently from ``json`` (invalid UTF-8 in a skipped value, a lone UTF-16
surrogate) makes :func:`decode_nodes` return None, and the caller decodes
the tree the slow way. tests/engine/test_tree.py and test_decoder_fuzz.py
hold the two paths to equal nodes, for our trees and for any input.

Imported on first use: a backup with no parent snapshot never pays for it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, TypeVar

import msgspec

from .gocompat import go_unquote_name
from .ids import BlobId, parse_id
from .tree import Node, decode_link_target, decode_name, decode_time

__all__ = ["decode_nodes", "light_nodes"]

_U32 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 32) - 1)]
_U63 = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
# msgspec bounds must fit an int64: the upper bound of a uint64 is checked below
_U64 = Annotated[int, msgspec.Meta(ge=0)]
_U64_END = 1 << 64


class _Xattr(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    name: str
    value: str | None


class _Node(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    name: str
    type: str
    mode: _U32 | None = None
    mtime: str | None = None
    atime: str | None = None
    ctime: str | None = None
    uid: _U32 | None = None
    gid: _U32 | None = None
    user: str | None = None
    group: str | None = None
    inode: _U64 | None = None
    device_id: _U64 | None = None
    size: _U63 | None = None
    links: _U64 | None = None
    linktarget: str | None = None
    linktarget_raw: str | None = None
    extended_attributes: list[_Xattr] | None = None
    device: _U64 | None = None
    content: list[str] | None = None
    subtree: str | None = None
    error: str | None = None


class _Tree(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    nodes: list[_Node] | None  # required, as the slow path requires it


_DECODER = msgspec.json.Decoder(_Tree)


class _LightNode(msgspec.Struct, gc=False):
    name: str
    type: str
    subtree: str | None = None
    size: int | None = None
    links: int | None = None
    inode: int | None = None
    device_id: int | None = None


class _LightTree(msgspec.Struct, gc=False):
    nodes: list[_LightNode] | None = None


_LIGHT = msgspec.json.Decoder(_LightTree)

L = TypeVar("L")


def decode_nodes(data: bytes | bytearray | memoryview) -> list[Node] | None:
    """The tree's nodes, or None when the slow path must decide (see above)."""
    try:
        doc = _DECODER.decode(data)
        nodes = [_node(n) for n in doc.nodes or ()]
    except (msgspec.DecodeError, ValueError, TypeError, OverflowError, RecursionError):
        return None
    names = {n.name for n in nodes}
    if len(names) != len(nodes):
        return None  # the slow path marks the second of two entries of one name
    return nodes


def _node(n: _Node) -> Node:
    """Node.decode's node for a struct msgspec checked; raises what it raises."""
    for big in (n.inode, n.device_id, n.links, n.device):
        if big is not None and big >= _U64_END:
            raise ValueError("out of range")
    mt, at, ct = n.mtime, n.atime, n.ctime
    mtime = decode_time(mt, "mtime")
    content = n.content
    subtree = n.subtree
    xattrs = n.extended_attributes
    return Node(
        decode_name(n.name),
        n.type,
        n.mode or 0,
        mtime,
        mtime if at == mt else decode_time(at, "atime"),
        mtime if ct == mt else decode_time(ct, "ctime"),
        n.uid or 0,
        n.gid or 0,
        n.user or "",
        n.group or "",
        n.inode or 0,
        n.device_id or 0,
        n.size or 0,
        n.links or 0,
        decode_link_target(n.linktarget, n.linktarget_raw),
        [] if not xattrs else [(a.name, base64.b64decode(a.value or "")) for a in xattrs],
        n.device or 0,
        None if content is None else [BlobId(parse_id(c)) for c in content],
        None if subtree is None else BlobId(parse_id(subtree)),
        n.error or "",
        {},
        (mt, at, ct) if mt and at and ct else None,
    )


def light_nodes(
    data: bytes | bytearray | memoryview,
    make: Callable[[bytes, str, BlobId | None, int, int, int, int], L],
) -> list[L] | None:
    """The fields of each node a count needs (name, type, subtree, size,
    links, inode, device id), each given to ``make``; None where
    :func:`.restorewalk.light_tree`'s slow path must decide.

    Other fields are skipped unread: a tree that is invalid only there (not
    UTF-8, a number of more digits than Python converts) is counted here,
    and reported when it is restored (a directory whose contents are lost;
    with ``--include`` below it, no longer "none of the paths is in the
    snapshot").
    """
    try:
        return [
            make(
                go_unquote_name(n.name),
                n.type,
                None if n.subtree is None else BlobId(parse_id(n.subtree)),
                n.size or 0,
                n.links or 0,
                n.inode or 0,
                n.device_id or 0,
            )
            for n in _LIGHT.decode(data).nodes or ()
        ]
    except (msgspec.DecodeError, ValueError, TypeError, OverflowError, RecursionError):
        return None
