"""The S3 backend against real S3 servers: moto and ``rclone serve s3``.

Every test talks HTTP to servers on 127.0.0.1 that the tests start and stop
(:mod:`s3servers`): moto (any credentials) and rclone 1.75's S3 server
(checks SigV4 signatures, answers Range GETs with 200). restic 0.14 is the
oracle for interop: it reads what we write through the same location, and
we read what it writes. Network faults come from :mod:`faultproxy` (503s, a
dead link, refused and reset connections) and from a server that stops.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import obstore
import pytest
from faultproxy import FaultProxy
from remotesupport import data_blobs, many_packs_tree, restored
from s3servers import Moto, RcloneS3, unique_bucket
from storage_suite import *  # noqa: F403 - the shared suite, run against the fixture below
from storage_suite import name_of
from support import FAST_KDF, PASSWORD, signature, write, write_config

from desktop_agent.config.location import parse_location
from desktop_agent.engine.backup import BackupOptions, backup
from desktop_agent.engine.errors import IntegrityError, NotFound, StorageError
from desktop_agent.engine.repository import Repository
from desktop_agent.engine.restore import RestoreOptions, restore
from desktop_agent.engine.storage import (
    AuthError,
    FileType,
    NetworkError,
    RetryPolicy,
    Storage,
    open_storage,
)
from desktop_agent.engine.storage.base import Buffer
from desktop_agent.engine.storage.retry import Retrier
from desktop_agent.engine.storage.s3 import MissingBucket, S3Storage

# a server that is gone for longer than 2 s is reported; tries come quickly
FAST_RETRY = RetryPolicy(give_up_after=2, base_delay=0.05, max_delay=0.2)
# a request with no answer for 0.5 s is abandoned; uploads of these tests are small
SHORT = {"connect_timeout": 1.0, "stall_timeout": 0.5, "min_upload_rate": 10e6}

Connect = Callable[..., S3Storage]


# ------------------------------------------------------------------ servers


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    """One moto server for the module; every test uses buckets of its own."""
    server = Moto()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rclone_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneS3]:
    """One ``rclone serve s3`` for the module; every test uses buckets of its own."""
    server = RcloneS3(tmp_path_factory.mktemp("rclone-s3") / "served")
    yield server
    server.stop()


@pytest.fixture
def connect(tmp_path: Path) -> Connect:
    """``connect(endpoint, bucket, prefix, access_key=..., secret_key=..., **kwargs)``:
    an S3Storage (moto's keys unless told), spooling in the test's folder."""

    def make(
        endpoint: str,
        bucket: str,
        prefix: str = "",
        *,
        access_key: str = Moto.access_key,
        secret_key: str = Moto.secret_key,
        **kwargs: object,
    ) -> S3Storage:
        kwargs.setdefault("spool_dir", str(tmp_path / "spool"))
        text = f"s3:{endpoint}/{bucket}" + (f"/{prefix}" if prefix else "")
        return S3Storage(
            parse_location(text),
            access_key=access_key,
            secret_key=secret_key,
            **kwargs,  # type: ignore[arg-type]
        )

    return make


def on_rclone(
    server: RcloneS3, connect: Connect, bucket: str, prefix: str = "", **kw: object
) -> S3Storage:
    """An S3Storage on the rclone server, with its keys."""
    return connect(
        server.endpoint,
        bucket,
        prefix,
        access_key=server.access_key,
        secret_key=server.secret_key,
        **kw,
    )


# ------------------------------------------------------------------ the shared suite


@pytest.fixture(params=["moto", "rclone"])
def storage(
    request: pytest.FixtureRequest, moto: Moto, rclone_s3: RcloneS3, connect: Connect
) -> Iterator[Storage]:
    """The S3 backend on each server: a prefix on moto, the top of the bucket on rclone."""
    store: S3Storage
    if request.param == "moto":
        store = connect(moto.endpoint, moto.make_bucket(), "nested/repo", retry=FAST_RETRY)
    else:
        store = on_rclone(rclone_s3, connect, rclone_s3.make_bucket(), retry=FAST_RETRY)
    store.create_layout()
    yield store
    assert store.retrier.retries == 0


# ------------------------------------------------------------------ layout and behaviour


@pytest.mark.parametrize("prefix", ["", "one/two"])
def test_the_object_keys_are_restics(moto: Moto, connect: Connect, prefix: str) -> None:
    bucket = moto.make_bucket()
    store = connect(moto.endpoint, bucket, prefix)
    store.create_layout()
    assert moto.keys(bucket) == []  # S3 has no folders: nothing to create
    pack, key, snap, index, lock = (os.urandom(100 + i) for i in range(5))
    store.save(FileType.PACK, name_of(pack), [pack])
    store.save(FileType.KEY, name_of(key), [key])
    store.save(FileType.SNAPSHOT, name_of(snap), [snap])
    store.save(FileType.INDEX, name_of(index), [index])
    store.save(FileType.LOCK, name_of(lock), [lock])
    store.save(FileType.CONFIG, "", [b"config"])
    top = f"{prefix}/" if prefix else ""
    assert moto.keys(bucket) == sorted(
        [
            f"{top}config",
            f"{top}data/{name_of(pack)[:2]}/{name_of(pack)}",
            f"{top}keys/{name_of(key)}",
            f"{top}snapshots/{name_of(snap)}",
            f"{top}index/{name_of(index)}",
            f"{top}locks/{name_of(lock)}",
        ]
    )
    body = moto.client().get_object(
        Bucket=bucket, Key=f"{top}data/{name_of(pack)[:2]}/{name_of(pack)}"
    )
    assert body["Body"].read() == pack
    assert store.exists()
    store.create_layout()  # harmless on an existing repository
    assert store.load(FileType.CONFIG, "") == b"config"
    assert store.location == f"s3:{moto.endpoint}/{bucket}" + (f"/{prefix}" if prefix else "")


def test_listing_skips_foreign_and_misplaced_objects(moto: Moto, connect: Connect) -> None:
    bucket = moto.make_bucket()
    store = connect(moto.endpoint, bucket, "repo")
    good = name_of(b"good")
    store.save(FileType.KEY, good, [b"good"])
    store.save(FileType.PACK, good, [b"good"])
    s3 = moto.client()
    for key in (
        "repo/keys/README",
        f"repo/keys/{good.upper()}",
        f"repo/keys/{good}-tmp-1234",
        f"repo/keys/sub/{good}",
        f"repo/data/{good}",  # restic's old layout: not where a pack is looked for
        f"repo/data/ff/{good}",  # the wrong subfolder
        f"repo/data/{good[:2]}/{good}.tmp",
        f"repo/keysX/{good}",  # a neighbour whose name starts the same
        f"other/keys/{good}",
        f"keys/{good}",
    ):
        s3.put_object(Bucket=bucket, Key=key, Body=b"foreign")
    assert list(store.list(FileType.KEY)) == [(good, 4)]
    assert list(store.list(FileType.PACK)) == [(good, 4)]
    assert list(store.list(FileType.INDEX)) == []


def test_many_threads_save_and_load_at_once(moto: Moto, connect: Connect) -> None:
    """The engine uploads from a thread pool and reads from several workers."""
    store = connect(moto.endpoint, moto.make_bucket(), "threads")
    store.create_layout()
    spool = Path(store.spool_dir())
    assert spool.is_dir() and (spool.stat().st_mode & 0o777) == 0o700
    rng = random.Random(3)
    packs = [rng.randbytes(rng.randrange(1, 300_000)) for _ in range(24)]

    def upload(data: bytes) -> None:
        path = spool / f"pack-{name_of(data)}"
        path.write_bytes(data)
        store.save_file(FileType.PACK, name_of(data), str(path))

    def read(data: bytes) -> bool:
        name = name_of(data)
        mid = len(data) // 2
        return (
            store.load(FileType.PACK, name) == data
            and store.load(FileType.PACK, name, mid, len(data) - mid) == data[mid:]
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, packs))
        assert all(pool.map(read, packs))
    assert sorted(store.list(FileType.PACK)) == sorted((name_of(d), len(d)) for d in packs)
    assert list(spool.iterdir()) == []
    assert store.upload_parallelism == 4
    assert store.retrier.retries == 0


@pytest.mark.parametrize("server_kind", ["moto", "rclone"])
def test_range_reads_and_size_limits(
    server_kind: str, moto: Moto, rclone_s3: RcloneS3, connect: Connect
) -> None:
    """rclone answers a Range GET with 200 and the range; obstore wants a 206:
    the ranges are read through a signed URL instead, with the same results."""
    if server_kind == "moto":
        store = connect(moto.endpoint, moto.make_bucket(), "ranges", retry=FAST_RETRY)
    else:
        store = on_rclone(rclone_s3, connect, rclone_s3.make_bucket(), "r", retry=FAST_RETRY)
    data = os.urandom(50_000)
    name = name_of(data)
    store.save(FileType.PACK, name, [data])
    # the first pass finds out how rclone answers ranges; the second goes the new way at once
    for _ in range(2):
        assert store.load(FileType.PACK, name, 49_990, 10) == data[-10:]
        assert store.load(FileType.PACK, name, 123, 4567) == data[123:4690]
        assert store.load(FileType.PACK, name, 40_000) == data[40_000:]
        assert store.load(FileType.PACK, name, 50_000) == b""
        assert store.load(FileType.PACK, name, 50_000, 0) == b""
        with pytest.raises(StorageError, match="beyond end"):
            store.load(FileType.PACK, name, 50_000, 1)
        with pytest.raises(StorageError, match="beyond end"):
            store.load(FileType.PACK, name, 50_001, 0)
        with pytest.raises(StorageError, match="shorter than expected"):
            store.load(FileType.PACK, name, 49_999, 2)
        with pytest.raises(NotFound):
            store.load(FileType.PACK, "00" * 32, 5, 10)
    assert store.load(FileType.PACK, name, max_size=50_000) == data
    with pytest.raises(IntegrityError, match="more than the 49999"):
        store.load(FileType.PACK, name, max_size=49_999)
    with pytest.raises(NotFound):
        store.load(FileType.PACK, "00" * 32, 5, 0)
    with pytest.raises(NotFound):
        store.load(FileType.KEY, "00" * 32, max_size=100)
    assert store.retrier.retries == 0


# ------------------------------------------------------------------ credentials and buckets


def test_wrong_credentials_are_said_in_one_line_and_not_retried(
    rclone_s3: RcloneS3, connect: Connect
) -> None:
    bucket = rclone_s3.make_bucket()
    good = on_rclone(rclone_s3, connect, bucket, "repo", retry=FAST_RETRY)
    good.save(FileType.CONFIG, "", [b"config"])
    assert good.exists()

    where = f"s3:{rclone_s3.endpoint}/{bucket}/repo"
    wrong_secret = "wrong-secret-" + "x" * 30
    bad = connect(
        rclone_s3.endpoint,
        bucket,
        "repo",
        access_key=rclone_s3.access_key,
        secret_key=wrong_secret,
        retry=FAST_RETRY,
    )
    started = time.monotonic()
    with pytest.raises(AuthError) as err:
        bad.load(FileType.CONFIG, "")
    assert time.monotonic() - started < 1
    assert str(err.value) == (
        f"the S3 server at {where} refused the credentials (SignatureDoesNotMatch); "
        "check the access key and secret key of this repository "
        "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
    )
    # a HEAD answer has no body to say why
    with pytest.raises(AuthError, match=r"refused the credentials \(403 Forbidden\)"):
        bad.exists()
    for op in (
        lambda: bad.save(FileType.KEY, name_of(b"k"), [b"k"]),
        lambda: list(bad.list(FileType.SNAPSHOT)),
        lambda: bad.remove(FileType.LOCK, name_of(b"l")),
        lambda: bad.load(FileType.PACK, name_of(b"p"), 1, 2),
    ):
        with pytest.raises(AuthError, match="refused the credentials") as err:
            op()
        assert "\n" not in str(err.value) and wrong_secret not in str(err.value)
    unknown = connect(
        rclone_s3.endpoint,
        bucket,
        "repo",
        access_key="AKUNKNOWNKEY0000000",
        secret_key=rclone_s3.secret_key,
        retry=FAST_RETRY,
    )
    with pytest.raises(AuthError, match=r"refused the credentials \(InvalidAccessKeyId\)"):
        list(unknown.list(FileType.KEY))
    assert bad.retrier.retries == unknown.retrier.retries == 0
    assert list(good.list(FileType.KEY)) == []  # nothing was stored by the refused requests


def test_missing_credentials_name_the_variables(
    moto: Moto, connect: Connect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = moto.make_bucket()
    store = connect(moto.endpoint, bucket, access_key="", secret_key="")
    with pytest.raises(AuthError) as err:
        store.exists()
    assert str(err.value) == (
        f"no S3 credentials for s3:{moto.endpoint}/{bucket}: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or store the access key and secret key of this repository "
        "in the settings"
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id-only")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    only_id = open_storage(f"s3:{moto.endpoint}/{bucket}", cache_root=str(tmp_path / "cache"))
    with pytest.raises(AuthError, match=r"set AWS_SECRET_ACCESS_KEY, or store"):
        list(only_id.list(FileType.SNAPSHOT))


def test_open_storage_takes_the_credentials_from_the_environment(
    moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = unique_bucket("env")
    text = f"s3:{moto.endpoint}/{bucket}/from/env"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", Moto.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-secret-env-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    store = open_storage(text, cache_root=str(tmp_path / "cache"))
    backend = getattr(store, "backend", store)  # under the index cache
    assert isinstance(backend, S3Storage)
    assert store.location == text
    assert Path(store.spool_dir()).is_relative_to(tmp_path / "cache")
    # a new bucket is made in the region asked for (a LocationConstraint)
    store.create_layout()
    location = moto.client().get_bucket_location(Bucket=bucket)["LocationConstraint"]
    assert location == "eu-west-1"
    store.save(FileType.KEY, name_of(b"k"), [b"k"])
    assert moto.keys(bucket) == [f"from/env/keys/{name_of(b'k')}"]
    assert "the-secret-env-key" not in repr(backend)


@pytest.mark.parametrize(
    ("text", "region", "url"),
    [
        # AWS: virtual-hosted, the region from the host name or the variable
        (
            "s3:s3.eu-central-1.amazonaws.com/my-bucket/p",
            "",
            "https://my-bucket.s3.eu-central-1.amazonaws.com/p/config?",
        ),
        ("s3:s3.amazonaws.com/my-bucket", "", "https://my-bucket.s3.amazonaws.com/config?"),
        ("s3:s3.amazonaws.com/my-bucket", "ap-south-1", "https://my-bucket.s3.amazonaws.com/"),
        # a dotted bucket does not fit AWS's certificate: path-style
        ("s3:s3.amazonaws.com/my.dotted.bucket", "", "https://s3.amazonaws.com/my.dotted.bucket/"),
        # any other server: path-style
        ("s3:https://minio.local:9000/bkt/x/y", "", "https://minio.local:9000/bkt/x/y/config?"),
        ("s3:http://10.0.0.2/bkt", "", "http://10.0.0.2/bkt/config?"),
    ],
)
def test_addressing_and_region_of_a_location(text: str, region: str, url: str) -> None:
    """Where requests go and which region signs them (obstore signs URLs locally)."""
    store = S3Storage(
        parse_location(text),
        spool_dir="unused",
        access_key="AKEXAMPLE",
        secret_key="s",
        region=region,
    )
    signed = obstore.sign(
        store._reader, "GET", store._key(FileType.CONFIG, ""), timedelta(minutes=1)
    )
    assert signed.startswith(url), signed
    scope = region or ("eu-central-1" if "eu-central-1" in text else "us-east-1")
    assert f"%2F{scope}%2Fs3%2Faws4_request" in signed, signed


def test_a_missing_bucket_is_named_and_created_by_init(moto: Moto, connect: Connect) -> None:
    bucket = unique_bucket("absent")
    store = connect(moto.endpoint, bucket, "repo", retry=FAST_RETRY)
    assert not store.exists()
    expected = (
        f"the bucket {bucket!r} does not exist at {moto.endpoint.split('://')[1]}; "
        f"create it, or check the repository location s3:{moto.endpoint}/{bucket}/repo"
    )
    for op in (
        lambda: list(store.list(FileType.SNAPSHOT)),
        lambda: store.save(FileType.KEY, name_of(b"k"), [b"k"]),
        lambda: store.load(FileType.KEY, name_of(b"k")),
        lambda: store.load(FileType.PACK, name_of(b"k"), 1, 1),
    ):
        with pytest.raises(MissingBucket) as err:
            op()
        assert str(err.value) == expected
    assert store.retrier.retries == 0
    # as restic does, a new repository gets its bucket
    repo = Repository.init(store, PASSWORD, kdf_params=FAST_KDF)
    assert bucket in {b["Name"] for b in moto.client().list_buckets()["Buckets"]}
    assert Repository.open(connect(moto.endpoint, bucket, "repo"), PASSWORD).config == repo.config


def test_a_bucket_that_cannot_be_created_says_so(moto: Moto, connect: Connect) -> None:
    bucket = unique_bucket("nope")
    with FaultProxy("127.0.0.1", moto.port) as proxy:
        store = connect(f"http://127.0.0.1:{proxy.port}", bucket, retry=FAST_RETRY)
        with pytest.raises(MissingBucket):
            list(store.list(FileType.KEY))
        # a key that may not create buckets: its CreateBucket is refused. The
        # proxy refuses the next request; create_layout's first one is the
        # check of the bucket, so the creation is asked for directly.
        proxy.fail_next(1, 403)
        with pytest.raises(MissingBucket) as err:
            store._create_bucket()
    assert str(err.value) == (
        f"the bucket {bucket!r} does not exist at 127.0.0.1:{proxy.port} and could not be "
        f"created (403 Forbidden); create it, or check the repository location "
        f"s3:http://127.0.0.1:{proxy.port}/{bucket}"
    )
    assert store.retrier.retries == 0
    assert bucket not in {b["Name"] for b in moto.client().list_buckets()["Buckets"]}


# ------------------------------------------------------------------ network faults


def test_503_answers_are_retried(moto: Moto, connect: Connect) -> None:
    bucket = moto.make_bucket()
    with FaultProxy("127.0.0.1", moto.port) as proxy:
        store = connect(f"http://127.0.0.1:{proxy.port}", bucket, "repo", retry=FAST_RETRY)
        data = os.urandom(20_000)
        proxy.fail_next(2, 503)
        store.save(FileType.PACK, name_of(data), [data])
        assert store.retrier.retries == 2
        proxy.fail_next(1, 500)
        assert store.load(FileType.PACK, name_of(data), 10, 10) == data[10:20]
        proxy.fail_next(1, 503)
        assert list(store.list(FileType.PACK)) == [(name_of(data), len(data))]
        proxy.fail_next(1, 503)
        assert store.exists() is False
        assert store.retrier.retries == 5
    assert moto.keys(bucket) == [f"repo/data/{name_of(data)[:2]}/{name_of(data)}"]


def test_answers_that_cannot_change_are_not_retried(moto: Moto, connect: Connect) -> None:
    """A full server (507) and a refusal without a reason (403) end at once, in one line."""
    bucket = moto.make_bucket()
    with FaultProxy("127.0.0.1", moto.port) as proxy:
        where = f"s3:http://127.0.0.1:{proxy.port}/{bucket}/repo"
        store = connect(f"http://127.0.0.1:{proxy.port}", bucket, "repo", retry=FAST_RETRY)
        data = os.urandom(5000)
        proxy.fail_next(1, 507)
        with pytest.raises(StorageError) as err:
            store.save(FileType.PACK, name_of(data), [data])
        assert str(err.value) == (
            f"the S3 server at {where} is full (507 Insufficient Storage) while saving "
            f"data/{name_of(data)}; free space or raise the bucket's quota"
        )
        proxy.fail_next(1, 403)
        with pytest.raises(AuthError, match=r"refused the credentials \(403 Forbidden\)"):
            list(store.list(FileType.SNAPSHOT))
        proxy.fail_next(1, 400)
        with pytest.raises(StorageError) as err:
            store.remove(FileType.LOCK, name_of(b"lock"))
        assert str(err.value) == (
            f"the S3 server at {where} rejected the request (400 Bad Request) while "
            f"deleting locks/{name_of(b'lock')}"
        )
        assert store.retrier.retries == 0
        store.save(FileType.PACK, name_of(data), [data])  # the server is fine otherwise
    assert moto.keys(bucket) == [f"repo/data/{name_of(data)[:2]}/{name_of(data)}"]


def test_an_upload_whose_answer_was_lost_is_stored_once_retried(
    moto: Moto, connect: Connect
) -> None:
    """The server stored the object but its answer was cut: the retry overwrites
    the object with the same bytes, and no error surfaces."""
    bucket = moto.make_bucket()
    data = os.urandom(200_000)
    key = f"repo/data/{name_of(data)[:2]}/{name_of(data)}"
    with FaultProxy("127.0.0.1", moto.port) as proxy:
        store = connect(f"http://127.0.0.1:{proxy.port}", bucket, "repo", **SHORT)
        twin = os.urandom(len(data))
        store.save(FileType.PACK, name_of(twin), [twin])
        stored_before_retry: list[bool] = []

        def on_retry(delay: float) -> None:
            keys = moto.keys(bucket)
            stored_before_retry.append(key in keys)
            time.sleep(delay)

        store.retrier = Retrier(store.location, FAST_RETRY, sleep=on_retry)
        # the request goes through and is answered; the answer never arrives
        proxy.lose_next_answer()
        spooled = Path(store.spool_dir()) / "pack-lost-answer"
        spooled.write_bytes(data)
        store.save_file(FileType.PACK, name_of(data), str(spooled))
        assert stored_before_retry == [True] and store.retrier.retries == 1
        assert proxy.lost_answers == 1
        assert not spooled.exists()
        assert store.load(FileType.PACK, name_of(data)) == data
        assert sorted(store.list(FileType.PACK)) == sorted(
            (name_of(d), len(d)) for d in (data, twin)
        )


def test_a_server_that_is_gone_gives_a_network_error_in_bounded_time(
    tmp_path: Path, connect: Connect
) -> None:
    server = RcloneS3(tmp_path / "gone")
    bucket = server.make_bucket()
    store = on_rclone(server, connect, bucket, "repo", retry=FAST_RETRY, **SHORT)
    store.save(FileType.CONFIG, "", [b"config"])
    server.stop()
    started = time.monotonic()
    with pytest.raises(NetworkError) as err:
        store.load(FileType.CONFIG, "")
    took = time.monotonic() - started
    assert 2 <= took < 5, took
    message = str(err.value)
    assert message.startswith(
        f"network: s3:{server.endpoint}/{bucket}/repo could not be reached for 2 s (cannot connect"
    ), message
    assert message.endswith("while reading config; check the connection and try again")
    assert "\n" not in message
    assert store.retrier.retries >= 3


def test_a_dead_link_is_abandoned_after_the_timeout(moto: Moto, connect: Connect) -> None:
    bucket = moto.make_bucket()
    with FaultProxy("127.0.0.1", moto.port) as proxy:
        store = connect(f"http://127.0.0.1:{proxy.port}", bucket, "repo", retry=FAST_RETRY, **SHORT)
        data = os.urandom(100_000)
        store.save(FileType.PACK, name_of(data), [data])
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(NetworkError) as err:
            store.load(FileType.PACK, name_of(data))
        took = time.monotonic() - started
        assert 2 <= took < 4, took
        assert str(err.value).startswith(
            f"network: s3:http://127.0.0.1:{proxy.port}/{bucket}/repo could not be reached "
            f"for 2 s (no answer within the timeout) while reading data/{name_of(data)}"
        ), str(err.value)
        # once given up, the server counts as down: one try each (one timeout)
        for op, what in (
            (lambda: store.load(FileType.PACK, name_of(data), 5, 5), "reading data/"),
            (lambda: list(store.list(FileType.INDEX)), "listing index"),
            # uploads too: stuck while sending or waiting for the answer
            (lambda: store.save(FileType.PACK, name_of(data[1:]), [data[1:]]), "saving data/"),
        ):
            started = time.monotonic()
            with pytest.raises(NetworkError) as err:
                op()
            took = time.monotonic() - started
            assert 0.4 < took < 1.5, (what, took)
            message = str(err.value)
            assert message.startswith(f"network: s3:http://127.0.0.1:{proxy.port}/"), message
            assert "still unreachable (no answer within the timeout)" in message, message
            assert f"while {what}" in message, message
        proxy.pass_through()
        assert store.load(FileType.PACK, name_of(data)) == data
        assert store.load(FileType.PACK, name_of(data), 5, 5) == data[5:10]


# ------------------------------------------------------------------ restic interop


def small_tree(root: Path, seed: int = 1) -> Path:
    """A few MB of files: large and small, nested, a symlink, an awkward name."""
    rng = random.Random(seed)
    write(root / "big.bin", rng.randbytes(2_500_000))
    write(root / "text.txt", b"hello S3\n" * 5000)
    for i in range(20):
        write(root / "many" / f"f{i:02}", rng.randbytes(1000 + i))
    write(root / "dir" / "Grüße.txt", b"unicode\n")
    write(root / "empty", b"")
    os.symlink("text.txt", root / "link")
    return root


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """restic finds moto's credentials where it looks for them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", Moto.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", Moto.secret_key)
    for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)


def test_restic_reads_what_we_write(
    tmp_path: Path, moto: Moto, connect: Connect, restic, aws_env: None
) -> None:
    bucket = moto.make_bucket()
    src = small_tree(tmp_path / "src")
    repo = Repository.init(connect(moto.endpoint, bucket, "ours"), PASSWORD, kdf_params=FAST_KDF)
    result = backup(repo, BackupOptions(sources=[str(src)]))
    assert result.skipped == ()

    location = f"s3:{moto.endpoint}/{bucket}/ours"
    restic(location, "check", "--read-data")
    snaps = json.loads(restic(location, "snapshots", "--json").stdout)
    assert [s["id"] for s in snaps] == [result.snapshot.id.hex()]
    target = tmp_path / "restic-restore"
    restic(location, "restore", "latest", "--target", str(target))
    assert signature(restored(target, src)) == signature(src)


def test_we_read_and_extend_what_restic_writes(
    tmp_path: Path, moto: Moto, connect: Connect, restic, aws_env: None
) -> None:
    bucket = moto.make_bucket()
    location = f"s3:{moto.endpoint}/{bucket}/restics"
    src = small_tree(tmp_path / "src", seed=2)
    restic(location, "init")
    restic(location, "backup", str(src))

    repo = Repository.open(connect(moto.endpoint, bucket, "restics"), PASSWORD)
    snaps = repo.list_snapshots()
    assert len(snaps) == 1 and list(snaps[0].paths) == [str(src)]
    target = tmp_path / "ours"
    res = restore(repo, snaps[0], RestoreOptions(target=str(target)))
    assert res.errors == ()
    assert signature(restored(target, src)) == signature(src)

    write(src / "new.bin", os.urandom(300_000))
    (src / "text.txt").write_bytes(b"changed\n")
    again = Repository.open(connect(moto.endpoint, bucket, "restics"), PASSWORD)
    second = backup(again, BackupOptions(sources=[str(src)]))
    assert second.summary.files_unmodified > 0
    assert second.snapshot.parent == snaps[0].id
    restic(location, "check", "--read-data")
    listed = json.loads(restic(location, "snapshots", "--json").stdout)
    assert second.snapshot.id.hex() in {s["id"] for s in listed} and len(listed) == 2
    out = tmp_path / "restic-restore"
    restic(location, "restore", second.snapshot.id.hex(), "--target", str(out))
    assert signature(restored(out, src)) == signature(src)


# ------------------------------------------------------------------ a whole backup under faults


def test_a_backup_through_resetting_connections_completes(
    tmp_path: Path,
    rclone_s3: RcloneS3,
    connect: Connect,
    restic,
    monkeypatch: pytest.MonkeyPatch,
    small_packs: None,
) -> None:
    """rclone keeps connections alive (moto closes each after one answer), so
    a connection carries several packs and dies in the middle of one; the
    ranged reads of the restores go through signed URLs (rclone answers 200)."""
    bucket = rclone_s3.make_bucket()
    Repository.init(on_rclone(rclone_s3, connect, bucket, "resets"), PASSWORD, kdf_params=FAST_KDF)
    src = many_packs_tree(tmp_path / "src", seed=3, count=8)
    with FaultProxy("127.0.0.1", rclone_s3.port) as proxy:
        store = connect(
            f"http://127.0.0.1:{proxy.port}",
            bucket,
            "resets",
            access_key=rclone_s3.access_key,
            secret_key=rclone_s3.secret_key,
            retry=RetryPolicy(give_up_after=30, base_delay=0.05, max_delay=0.2),
            # a connection cut in the middle of an answer is held open by the
            # proxy (not reset): found by the timeouts
            stall_timeout=2.0,
            min_upload_rate=2e6,
        )
        # the first three connections that carry 600 kB die, in the middle of a
        # pack (about 1.2 MB each) whichever connection the client sends it on
        proxy.reset_after(600_000, times=3)
        result = backup(Repository.open(store, PASSWORD), BackupOptions(sources=[str(src)]))
        assert proxy.resets == 3
        assert store.retrier.retries >= 3
        proxy.pass_through()
        ours = tmp_path / "our-restore"
        again = Repository.open(store, PASSWORD)
        snap = again.find_snapshot(result.snapshot.id.hex())
        errors = restore(again, snap, RestoreOptions(target=str(ours))).errors
        assert errors == (), errors[0]
    assert signature(restored(ours, src)) == signature(src)

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", rclone_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rclone_s3.secret_key)
    location = f"s3:{rclone_s3.endpoint}/{bucket}/resets"
    restic(location, "check", "--read-data")
    target = tmp_path / "restic-restore"
    restic(location, "restore", result.snapshot.id.hex(), "--target", str(target))
    assert signature(restored(target, src)) == signature(src)


class CutAfterFirstIndex(S3Storage):
    """The real backend; the network goes away once an index checkpoint is stored."""

    proxy: FaultProxy

    def save(self, ftype: FileType, name: str, parts: Sequence[Buffer]) -> None:
        super().save(ftype, name, parts)
        if ftype is FileType.INDEX:
            self.proxy.refuse()


def test_a_backup_that_loses_the_server_fails_cleanly_and_the_next_stores_the_rest(
    tmp_path: Path, moto: Moto, connect: Connect, restic, aws_env: None, small_packs: None
) -> None:
    bucket = moto.make_bucket()
    Repository.init(connect(moto.endpoint, bucket, "lost"), PASSWORD, kdf_params=FAST_KDF)
    src = many_packs_tree(tmp_path / "src", seed=4, count=12)

    with FaultProxy("127.0.0.1", moto.port) as proxy:
        store = CutAfterFirstIndex(
            parse_location(f"s3:http://127.0.0.1:{proxy.port}/{bucket}/lost"),
            spool_dir=str(tmp_path / "spool"),
            access_key=Moto.access_key,
            secret_key=Moto.secret_key,
            # every request after the cut waits out the bound: keep it short
            retry=RetryPolicy(give_up_after=1, base_delay=0.05, max_delay=0.2),
            **SHORT,  # type: ignore[arg-type]
        )
        store.proxy = proxy
        started = time.monotonic()
        with pytest.raises(StorageError) as err:
            backup(Repository.open(store, PASSWORD), BackupOptions(sources=[str(src)]))
        took = time.monotonic() - started
    message = str(err.value)
    assert "\n" not in message and message.startswith("network: "), message
    assert re.search(r"could not be reached for [12] s \(", message), message
    assert took < 20, took

    plain = connect(moto.endpoint, bucket, "lost")
    assert list(plain.list(FileType.SNAPSHOT)) == []
    location = f"s3:{moto.endpoint}/{bucket}/lost"
    # our lock could not be removed while the server was unreachable
    restic(location, "--no-lock", "check", "--read-data")
    before = data_blobs(plain)
    assert before  # the checkpointed packs are indexed

    second = backup(Repository.open(plain, PASSWORD), BackupOptions(sources=[str(src)]))
    after = data_blobs(plain)
    # what the index listed was not stored again; only the rest was (and the trees)
    missing = after.keys() - before.keys()
    assert second.summary.data_blobs == len(missing) > 0
    stored = sum(after[b] for b in missing)
    assert stored <= second.summary.data_added < stored + 100_000
    assert sum(before.values()) > 1_000_000  # at least one large file was kept
    restic(location, "--no-lock", "check", "--read-data")
    target = tmp_path / "restic-restore"
    restic(location, "--no-lock", "restore", second.snapshot.id.hex(), "--target", str(target))
    assert signature(restored(target, src)) == signature(src)


# ------------------------------------------------------------------ the command line


def test_the_cli_backs_up_to_an_s3_location(
    tmp_path: Path, moto: Moto, rclone_s3: RcloneS3, cli, restic, aws_env: None
) -> None:
    """The credentials come from restic's variables; an error is one line on stderr."""
    bucket = moto.make_bucket()
    location = f"s3:{moto.endpoint}/{bucket}/cli"
    src = small_tree(tmp_path / "src", seed=5)
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")
    os.chmod(password, 0o600)
    config = write_config(
        tmp_path / "config.toml", repo=location, sources=[src], password_file=password
    )
    env = {"AWS_ACCESS_KEY_ID": Moto.access_key, "AWS_SECRET_ACCESS_KEY": Moto.secret_key}
    for command in ("init", "backup", "check"):
        done = cli("--config", str(config), command, env=env)
        assert done.returncode == 0, done.stderr
    assert any(k.startswith("cli/data/") for k in moto.keys(bucket))
    restic(location, "check", "--read-data")

    wrong = rclone_s3.make_bucket()
    config = write_config(
        tmp_path / "wrong.toml",
        repo=f"s3:{rclone_s3.endpoint}/{wrong}",
        sources=[src],
        password_file=password,
    )
    bad_env = {"AWS_ACCESS_KEY_ID": rclone_s3.access_key, "AWS_SECRET_ACCESS_KEY": "not-it-" * 6}
    done = cli("--config", str(config), "snapshots", env=bad_env)
    assert done.returncode != 0
    assert done.stderr == (
        f"desktop-agent: error: the S3 server at s3:{rclone_s3.endpoint}/{wrong} refused "
        "the credentials (403 Forbidden); check the access key and secret key of this "
        "repository (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)\n"
    )
    missing = cli("--config", str(config), "snapshots")
    assert missing.returncode != 0
    assert missing.stderr.startswith("desktop-agent: error: no S3 credentials for s3:")
    assert missing.stderr.count("\n") == 1
