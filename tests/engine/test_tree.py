"""tree: nodes and tree blobs in restic's JSON, byte-identical to what restic 0.14 writes."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from desktop_agent.engine import crypto, gocompat, treedoc
from desktop_agent.engine.errors import IntegrityError
from desktop_agent.engine.ids import BlobId
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.storage import LocalStorage
from desktop_agent.engine.tree import (
    MODE_DIR,
    MODE_SYMLINK,
    Node,
    NodeType,
    decode_tree,
    decode_tree_by_node,
    encode_tree,
    go_mode,
    unix_mode,
)

PASSWORD = "tree test password"
ZONE = "Asia/Kolkata"  # a non-zero, non-whole-hour offset: "+05:30"


@contextmanager
def local_tz(name: str) -> Iterator[None]:
    """Run with ``TZ`` set for us and for restic (restored afterwards)."""

    def forget() -> None:  # format_time memoizes local seconds per process
        cache = getattr(gocompat, "_second_cache", None)
        if isinstance(cache, dict):
            cache.clear()

    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    forget()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()
        forget()


def roundtrip(node: Node) -> Node:
    """Encode, parse as JSON, decode; drop the remembered time strings."""
    back = Node.decode(json.loads(node.encode()))
    assert back.time_text is not None
    back.time_text = None
    return back


# ------------------------------------------------------------------- nodes

_ids = st.binary(min_size=32, max_size=32).map(BlobId)
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_times = st.integers(0, 7_258_118_400 * 10**9)  # 1970..2200
_u32 = st.integers(0, 2**32 - 1)
_u64 = st.integers(0, 2**64 - 1)

nodes = st.builds(
    Node,
    name=st.binary(min_size=1, max_size=24).filter(
        lambda n: n not in (b".", b"..") and b"/" not in n and b"\0" not in n
    ),
    type=st.sampled_from(
        [
            NodeType.FILE,
            NodeType.DIR,
            NodeType.SYMLINK,
            NodeType.FIFO,
            NodeType.DEV,
            NodeType.SOCKET,
        ]
    ),
    mode=_u32,
    mtime=_times,
    atime=_times,
    ctime=_times,
    uid=_u32,
    gid=_u32,
    user=_text,
    group=_text,
    inode=_u64,
    device_id=_u64,
    size=st.integers(0, 2**63 - 1),
    links=_u64,
    linktarget=st.binary(max_size=24).filter(lambda t: b"\0" not in t),
    xattrs=st.lists(st.tuples(_text.filter(bool), st.binary(max_size=16)), max_size=3),
    device=_u64,
    content=st.none() | st.lists(_ids, max_size=3),
    subtree=st.none() | _ids,
    error=_text,
)


@settings(max_examples=300, deadline=None)
@given(nodes)
def test_node_encode_decode_round_trip(node: Node) -> None:
    text = node.encode()
    obj = json.loads(text)
    assert obj["name"] == gocompat.go_quote_name(node.name)
    assert roundtrip(node) == node
    # a decoded node re-encodes to the very same bytes
    assert Node.decode(obj).encode() == text


@settings(max_examples=100, deadline=None)
@given(nodes, st.sampled_from(["UTC", "Europe/Berlin", ZONE, "America/St_Johns"]))
def test_node_times_round_trip_in_any_zone(node: Node, zone: str) -> None:
    with local_tz(zone):
        assert roundtrip(node) == node


def test_node_field_order_and_omitempty_follow_restics_struct() -> None:
    node = Node(
        name=b"f",
        type="file",
        mode=0o644,
        mtime=1,
        atime=1,
        ctime=1,
        uid=1000,
        gid=0,
        user="me",
        inode=7,
        size=3,
        links=1,
        content=[BlobId(b"\xab" * 32)],
    )
    with local_tz("UTC"):
        assert node.encode() == (
            '{"name":"f","type":"file","mode":420,"mtime":"1970-01-01T00:00:00.000000001Z",'
            '"atime":"1970-01-01T00:00:00.000000001Z","ctime":"1970-01-01T00:00:00.000000001Z",'
            '"uid":1000,"gid":0,"user":"me","inode":7,"size":3,"links":1,'
            '"content":["' + "ab" * 32 + '"]}'
        )
        empty = Node(name=b"d", type="dir")
        assert empty.encode() == (
            '{"name":"d","type":"dir","mtime":"1970-01-01T00:00:00Z","atime":"1970-01-01T00:00:00Z",'
            '"ctime":"1970-01-01T00:00:00Z","uid":0,"gid":0,"content":null}'
        )


def test_symlink_target_that_is_not_utf8_is_kept_raw() -> None:
    node = Node(name=b"l", type="symlink", linktarget=b"tgt\xfe\xffx")
    obj = json.loads(node.encode())
    # restic >= 0.16 writes both: a readable (lossy) text and the raw bytes
    assert '"linktarget":"tgt\\ufffd\\ufffdx","linktarget_raw":"' in node.encode()
    assert base64.b64decode(obj["linktarget_raw"]) == b"tgt\xfe\xffx"
    assert Node.decode(obj).linktarget == b"tgt\xfe\xffx"


def test_unknown_fields_survive_decode_and_encode() -> None:
    raw = (
        b'{"nodes":[{"name":"f","type":"file","mode":420,"mtime":"2024-01-01T00:00:00+01:00",'
        b'"atime":"2024-01-01T00:00:00+01:00","ctime":"2024-01-01T00:00:00+01:00","uid":0,"gid":0,'
        b'"extended_attributes":[{"name":"user.k","value":"dg=="}],'
        b'"generic_attributes":{"windows.attrs":"AQ==","windows.creation_time":"AAE="},'
        b'"content":[],"error":"read: oops","later_field":{"x":[1,2]}}]}\n'
    )
    (node,) = decode_tree(raw)
    assert node.xattrs == [("user.k", b"v")]
    assert node.extra == {
        "generic_attributes": {"windows.attrs": "AQ==", "windows.creation_time": "AAE="},
        "later_field": {"x": [1, 2]},
    }
    assert encode_tree([node]) == raw


# ------------------------------------------------------------------- trees


def test_encode_tree_sorts_by_raw_name() -> None:
    names = [b"b", b"\xff", "ä".encode(), b"B", b"a", b"a\x01", b"a b"]
    tree = encode_tree([Node(name=n, type="file", content=[]) for n in names])
    assert tree.startswith(b'{"nodes":[{"name":"B",') and tree.endswith(b"]}\n")
    assert [n.name for n in decode_tree(tree)] == sorted(names)
    # not the order of the quoted names ("\\xff" would sort first)
    assert [n.name for n in decode_tree(tree)][-1] == b"\xff"


@settings(max_examples=200, deadline=None)
@given(st.lists(nodes, max_size=6, unique_by=lambda n: n.name))
def test_trees_we_write_decode_in_c_to_the_nodes_the_slow_path_makes(items: list[Node]) -> None:
    raw = encode_tree(items)
    fast = treedoc.decode_nodes(raw)
    assert fast is not None  # nothing in them needs the slow path
    assert fast == decode_tree_by_node(raw)
    assert encode_tree(fast) == raw


_OK = b'{"name":"ok","type":"file","mtime":"2024-01-01T00:00:00Z","content":[]}'


@pytest.mark.parametrize(
    "doc",
    [
        # a field we do not know: kept (in Node.extra) only by the slow path
        b'{"nodes":[{"name":"x","type":"file","generic_attributes":{"a":"b"}}]}',
        b'{"nodes":[],"other":1}',
        b'{"nodes":[{"name":"x","type":"file","extended_attributes":[{"name":"a","value":"","z":1}]}]}',
        # a bad node: the slow path makes it one undecodable entry
        b'{"nodes":[{"name":"x","type":"file","uid":-1},' + _OK + b"]}",
        b'{"nodes":[{"name":"a/b","type":"file"},' + _OK + b"]}",
        b'{"nodes":[{"name":"x","type":"file","mtime":"soon"},' + _OK + b"]}",
        b'{"nodes":[{"name":"x","type":"file","inode":18446744073709551616},' + _OK + b"]}",
        b'{"nodes":[{"name":"x","type":"file","size":true},' + _OK + b"]}",
        b'{"nodes":[{"name":"x","type":"file","content":["ab"]},' + _OK + b"]}",
        b'{"nodes":[{"name":"x","type":"symlink","linktarget":"a\\u0000"},' + _OK + b"]}",
        b'{"nodes":[{"name":"x","type":"file","extended_attributes":[{"name":"a"}]}]}',
        # two entries of one name
        b'{"nodes":[' + _OK + b"," + _OK + b"]}",
        # JSON the two parsers read differently, or not at all
        b'{"nodes":[{"name":"\\udc80","type":"file"}]}',
        b'{"nodes":[{"name":"x","type":"file","size":NaN}]}',
        b'\xef\xbb\xbf{"nodes":[]}',
        b'{"nodes":[{"name":"\xff","type":"file"}]}',
        b'{"nodes":[{"name":"a\tb","type":"file"}]}',
        b'{"nodes":[{"name":"x","type":"file"}]} x',
        b"{}",
        b"[]",
    ],
)
def test_what_the_c_decoder_does_not_take_goes_to_the_slow_path(doc: bytes) -> None:
    assert treedoc.decode_nodes(doc) is None
    try:
        slow = decode_tree_by_node(doc)
    except IntegrityError:
        with pytest.raises(IntegrityError):
            decode_tree(doc)
    else:
        assert decode_tree(doc) == slow


def test_empty_tree() -> None:
    assert encode_tree([]) == b'{"nodes":[]}\n'
    assert decode_tree(b'{"nodes":[]}\n') == []
    assert decode_tree(b'{"nodes":null}') == []


def test_encode_tree_rejects_duplicate_names() -> None:
    with pytest.raises(IntegrityError, match="duplicate"):
        encode_tree(
            [Node(name=b"x", type="file"), Node(name=b"y", type="dir"), Node(name=b"x", type="dir")]
        )


@settings(max_examples=100, deadline=None)
@given(st.lists(nodes, max_size=6, unique_by=lambda n: n.name))
def test_tree_round_trip(items: list[Node]) -> None:
    raw = encode_tree(items)
    back = decode_tree(raw)
    assert [n.name for n in back] == sorted(n.name for n in items)
    assert encode_tree(back) == raw


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"tree":[]}',
        b'{"nodes":{}}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"nodes":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_malformed_tree_raises_integrity_error(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        decode_tree(raw)


@pytest.mark.parametrize(
    "node, why",
    [
        (b"1", "not a JSON object"),
        (b'{"type":"file"}', "KeyError"),
        (b'{"name":"x"}', "KeyError"),
        (b'{"name":"bad\\\\q","type":"file"}', "invalid escape"),
        (b'{"name":"x","type":"file","content":["abc"]}', "invalid id"),
        (b'{"name":"x","type":"dir","subtree":"zz"}', "invalid id"),
        # 64 characters whose hex has spaces: bytes.fromhex would give 21 bytes
        (b'{"name":"x","type":"dir","subtree":"' + b"aa" * 21 + b" " * 22 + b'"}', "invalid id"),
        (b'{"name":"x","type":"file","content":["' + b" aa" * 21 + b' "]}', "invalid id"),
        (b'{"name":"x","type":"file","mtime":"yesterday"}', "invalid timestamp"),
        (b'{"name":"x","type":"file","mode":1e999}', "mode is not an integer"),
        (b'{"name":"x","type":"file","size":"big"}', "size is not an integer"),
        (b'{"name":"x","type":"symlink","linktarget_raw":5}', "linktarget_raw is not a string"),
        (b'{"name":"x","type":"file","extended_attributes":[{"value":"AA=="}]}', "KeyError"),
        # values that reach system calls and would overflow or be refused there
        (b'{"name":"x\\u0000y","type":"file"}', "cannot be a file name"),
        (b'{"name":"a/b","type":"file"}', "cannot be a file name"),
        (b'{"name":"..","type":"dir"}', "cannot be a file name"),
        (b'{"name":"","type":"file"}', "cannot be a file name"),
        (b'{"name":"x","type":"symlink","linktarget":"/a\\u0000b"}', "NUL"),
        (b'{"name":"x","type":"file","size":18446744073709551616}', "size"),
        (b'{"name":"x","type":"file","size":9223372036854775808}', "size"),
        (b'{"name":"x","type":"file","uid":1099511627776}', "uid"),
        (b'{"name":"x","type":"file","gid":-1}', "gid"),
        (b'{"name":"x","type":"file","inode":-5}', "inode"),
        (b'{"name":"x","type":"dev","device":36893488147419103232}', "device"),
        (b'{"name":"x","type":"file","mtime":"99999-01-01T00:00:00Z"}', "mtime"),
        (b'{"name":"x","type":"file","uid":true}', "uid is not an integer"),
    ],
)
def test_a_bad_node_is_an_error_for_that_entry_only(node: bytes, why: str) -> None:
    good = b'{"name":"ok","type":"file","content":[]}'
    nodes = decode_tree(b'{"nodes":[' + node + b"," + good + b"]}")
    assert [n.type for n in nodes] == [NodeType.INVALID, NodeType.FILE]
    assert why in nodes[0].invalid
    assert nodes[1].name == b"ok" and not nodes[1].invalid


def test_an_invalid_node_keeps_the_references_that_parse() -> None:
    blob = "ab" * 32
    (node,) = decode_tree(
        b'{"nodes":[{"name":"f","type":"file","uid":-1,"content":["'
        + blob.encode()
        + b'","zz"],"subtree":"'
        + blob.encode()
        + b'"}]}'
    )
    assert node.type == NodeType.INVALID and node.name == b"f"
    assert node.content == [bytes.fromhex(blob)] and node.subtree == bytes.fromhex(blob)


def test_a_second_entry_of_the_same_name_is_invalid() -> None:
    one = b'{"name":"x","type":"dir","subtree":"' + b"ab" * 32 + b'"}'
    two = b'{"name":"x","type":"file","content":[]}'
    first, second = decode_tree(b'{"nodes":[' + one + b"," + two + b"]}")
    assert first.type == NodeType.DIR
    assert second.type == NodeType.INVALID and "same name" in second.invalid


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_node_like = st.fixed_dictionaries(
    {},
    optional={
        k: _json
        for k in (
            "name type mode mtime atime ctime uid gid user inode size linktarget "
            "linktarget_raw extended_attributes content subtree"
        ).split()
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_json, st.fixed_dictionaries({"nodes": st.lists(_node_like | _json, max_size=3)})))
def test_any_json_decodes_or_raises_integrity_error(doc: object) -> None:
    try:
        nodes = decode_tree(json.dumps(doc).encode())
    except IntegrityError:
        return
    for node in nodes:
        assert node.type != NodeType.INVALID or node.invalid


# ------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    "unix, go",
    [
        (stat.S_IFREG | 0o644, 0o644),
        (stat.S_IFDIR | 0o755, MODE_DIR | 0o755),  # 2147484141 in restic's trees
        (stat.S_IFLNK | 0o777, MODE_SYMLINK | 0o777),  # 134218239
        (stat.S_IFIFO | 0o644, (1 << 25) | 0o644),  # 33554852
        (stat.S_IFREG | stat.S_ISUID | 0o644, (1 << 23) | 0o644),  # 8389028
        (stat.S_IFDIR | stat.S_ISGID | 0o2755, MODE_DIR | (1 << 22) | 0o755),
        (stat.S_IFDIR | stat.S_ISVTX | 0o777, MODE_DIR | (1 << 20) | 0o777),
        (stat.S_IFSOCK | 0o755, (1 << 24) | 0o755),
        (stat.S_IFBLK | 0o660, (1 << 26) | 0o660),
        (stat.S_IFCHR | 0o620, (1 << 26) | (1 << 21) | 0o620),
    ],
)
def test_go_mode_vectors(unix: int, go: int) -> None:
    assert go_mode(unix) == go
    assert unix_mode(go) == stat.S_IMODE(unix)


_kinds = st.sampled_from(
    [
        stat.S_IFREG,
        stat.S_IFDIR,
        stat.S_IFLNK,
        stat.S_IFIFO,
        stat.S_IFSOCK,
        stat.S_IFBLK,
        stat.S_IFCHR,
    ]
)


@given(_kinds, st.integers(0, 0o7777))
def test_unix_mode_inverts_go_mode(kind: int, perm: int) -> None:
    go = go_mode(kind | perm)
    assert unix_mode(go) == perm
    assert (go & MODE_DIR != 0) == (kind == stat.S_IFDIR)
    assert (go & MODE_SYMLINK != 0) == (kind == stat.S_IFLNK)


# ------------------------------------------------------------ restic as oracle

# odd names: restic quotes them with strconv.Quote and Go's JSON escapes the rest
ODD_NAMES = [
    b"bad\xffname",
    b'q"b\\s',
    b"tab\tnl\n",
    "Grüße".encode(),
    b"<html>&amp",
    b"ctl\x01\x1f\x7f",
    "c1\x85nbsp\xa0zw\u200bls\u2028".encode(),
    "emoji😀 e\u0301 \ufffd".encode(),
    b"trunc\xe2\x82",
    b"surr\xed\xa0\x80",
    b"overlong\xc0\xaf",
]
BAD_TARGET = b"tgt\xfe\xffx"


def _restic(repo: Path, *args: str) -> bytes:
    exe = shutil.which("restic")
    if exe is None:
        pytest.skip("restic is not installed")
    env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=str(repo.parent / "cache"))
    proc = subprocess.run(
        [exe, "-r", str(repo), *args], env=env, cwd=repo.parent, capture_output=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def _make_source(src: Path) -> bool:
    """The odd tree; True when the file system took an extended attribute."""
    raw = os.fsencode(src)
    src.mkdir()
    for i, name in enumerate(ODD_NAMES):
        with open(raw + b"/" + name, "wb") as fh:
            fh.write(b"%d\n" % i)
    (src / "empty").write_bytes(b"")
    (src / "hard1").write_bytes(b"linked\n")
    os.link(src / "hard1", src / "hard2")
    os.chmod(src / "hard1", 0o4755)
    os.symlink("Grüße", src / "link")
    os.mkfifo(src / "fifo")
    (src / "emptydir").mkdir()
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "sub" / "deeper" / "file.txt").write_bytes(b"deep\n")
    os.chmod(src / "sub", 0o2755)
    os.chmod(src / "emptydir", 0o1777)
    (src / "badlink").mkdir()
    os.symlink(BAD_TARGET, raw + b"/badlink/target")
    os.utime(src / "empty", ns=(1_700_000_000_000_000_000, 1_700_000_000_120_000_000))
    try:
        os.setxattr(src / "hard1", "user.comment", b"\x00binary\xff")
    except OSError:
        return False  # the file system of tmp_path has no user xattrs
    return True


def test_restic_trees_decode_and_re_encode_byte_identically(tmp_path: Path) -> None:
    src = tmp_path / "src"
    has_xattr = _make_source(src)
    repo = tmp_path / "repo"
    # a repository with a cheap key, so that each restic call below is quick;
    # the trees in it are all written by restic
    Repository.init(LocalStorage(repo), PASSWORD, kdf_params=crypto.KDFParams(n=1024, r=8, p=1))
    trees: dict[Path, bytes] = {}
    with local_tz(ZONE):
        _restic(repo, "backup", "src")  # relative: the root tree holds "src"
        (snap,) = json.loads(_restic(repo, "snapshots", "--json"))

        pending = [(Path("/"), snap["tree"])]
        while pending:
            where, tree_id = pending.pop()
            raw = _restic(repo, "cat", "blob", tree_id)
            trees[where] = raw
            for node in decode_tree(raw):
                if node.subtree is not None:
                    pending.append((where / os.fsdecode(node.name), node.subtree.hex()))

        assert sorted(trees) == [
            Path(p)
            for p in ["/", "/src", "/src/badlink", "/src/emptydir", "/src/sub", "/src/sub/deeper"]
        ]
        for where, raw in trees.items():
            if where.name == "badlink":
                continue  # restic 0.14 lost the target's bytes (below)
            nodes = decode_tree(raw)
            assert encode_tree(nodes) == raw, where
            # and built from the values alone, with our own time formatting
            fresh = [replace(n, time_text=None) for n in nodes]
            assert encode_tree(fresh) == raw, where

    listing = {n.name: n for n in decode_tree(trees[Path("/src")])}
    assert set(listing) == {*ODD_NAMES} | {
        b"empty",
        b"hard1",
        b"hard2",
        b"link",
        b"fifo",
        b"emptydir",
        b"sub",
        b"badlink",
    }
    for name, node in listing.items():
        st_ = os.lstat(os.fsencode(src) + b"/" + name)
        assert node.mode == go_mode(st_.st_mode), name
        assert node.mtime == st_.st_mtime_ns, name
        assert node.inode == st_.st_ino, name
    assert listing[b"empty"].content == [] and listing[b"empty"].mtime == 1_700_000_000_120_000_000
    assert listing[b"fifo"].type == "fifo" and listing[b"fifo"].content is None
    assert listing[b"link"].linktarget == "Grüße".encode()
    assert listing[b"hard1"].links == listing[b"hard2"].links == 2
    assert listing[b"hard1"].inode == listing[b"hard2"].inode
    assert unix_mode(listing[b"hard1"].mode) == 0o4755
    if has_xattr:
        assert listing[b"hard1"].xattrs == [("user.comment", b"\x00binary\xff")]
    assert trees[Path("/src") / "emptydir"] == b'{"nodes":[]}\n'

    # restic 0.14 stores a non-UTF-8 target as text with \ufffd escapes only; we
    # write the same text and add linktarget_raw (as restic >= 0.16 does)
    raw = trees[Path("/src") / "badlink"]
    (theirs,) = decode_tree(raw)
    assert b'"linktarget":"tgt\\ufffd\\ufffdx"' in raw
    with local_tz(ZONE):
        ours = encode_tree([replace(theirs, linktarget=BAD_TARGET)])
    extra = b',"linktarget_raw":"' + base64.b64encode(BAD_TARGET) + b'"'
    assert extra in ours
    assert ours.replace(extra, b"") == raw
