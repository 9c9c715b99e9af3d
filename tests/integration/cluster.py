"""Cluster nodes for tests: real ``twistd -n stow`` processes sharing one index database.

Each ``Node`` is its own process on its own loopback port, with its own
working directory and spool; nodes of one test share a SeaweedFS bucket (or
not, for the filesystem) and the PostgreSQL database of ``--index``. Used by
tests/integration/test_index*.py and test_outbox*.py.
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import requests
from pydicom.uid import generate_uid

from tests.dicom_files import CT
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.seaweedfs import SeaweedFS, credentials_env
from tests.launcher import LOOPBACK_ANY_PORT, Twistd

BOUNDARY = "cluster-test-boundary-0123456789"
ANSWER_TIMEOUT_SECONDS = 60.0
DUPLICATE = 0x0111
PROCESSING_FAILURE = 0x0110


class Node:
    """One ``twistd -n stow --index URL`` (``--storage`` S3 when ``bucket`` is given)."""

    def __init__(
        self,
        base: Path,
        index_url: str,
        *options: str,
        seaweed: SeaweedFS | None = None,
        bucket: str | None = None,
    ) -> None:
        base.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        storage: list[str] = []
        if bucket is not None:
            assert seaweed is not None
            env.update(credentials_env())
            storage = [
                "--storage",
                f"s3://{bucket}/site",
                "--s3-endpoint",
                seaweed.endpoint,
                "--workflow-spool",
                str(base / "spool"),
            ]
        self.base = base
        # Twistd passes a --storage of its own first; a later s3:// one wins.
        self.twistd = Twistd(
            base / "store",
            "--listen",
            LOOPBACK_ANY_PORT,
            "--index",
            index_url,
            *storage,
            *options,
            env=env,
            cwd=base,
        )
        (port,) = self.twistd.ports(1)
        self.url = f"http://127.0.0.1:{port}"

    def post(self, parts: list[bytes], path: str = "/studies") -> requests.Response:
        return requests.post(
            self.url + path,
            data=build_multipart(parts, BOUNDARY),
            headers={
                "Content-Type": multipart_content_type(BOUNDARY),
                "Accept": "application/dicom+json",
            },
            timeout=ANSWER_TIMEOUT_SECONDS,
        )

    def kill(self) -> None:
        """SIGKILL by PID: the node dies for good, no shutdown code runs."""
        os.kill(self.twistd.pid, signal.SIGKILL)
        self.twistd.process.wait()

    def stop(self) -> None:
        self.twistd.stop()


def new_instance(*, padding: int = 0, seed: int = 0) -> tuple[pydicom.Dataset, bytes]:
    """CT_small as a new instance (fresh SOP Instance UID), ``padding`` bytes longer."""
    ds = pydicom.dcmread(CT)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    return ds, with_padding(ds, padding=padding, seed=seed)


def with_padding(ds: pydicom.Dataset, *, padding: int, seed: int) -> bytes:
    """``ds`` with a trailing padding element of ``padding`` bytes made from ``seed``:
    other bytes under the same UIDs for each seed."""
    with BytesIO() as buffer:
        pydicom.dcmwrite(buffer, ds)
        data = buffer.getvalue()
    if not padding:
        return data
    filler = bytes((seed + i) % 241 for i in range(241)) * (padding // 241 + 1)
    # (FFFC,FFFC) Data Set Trailing Padding, OB: after everything validation reads.
    return data + b"\xfc\xff\xfc\xffOB\x00\x00" + struct.pack("<I", padding) + filler[:padding]


def failure_reasons(answer: dict[str, Any]) -> list[int]:
    """FailureReason of each FailedSOPSequence item of a JSON Store Instances Response."""
    items = answer.get("00081198", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in items]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
