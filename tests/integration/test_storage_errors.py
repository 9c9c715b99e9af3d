"""Storage failures over real HTTP: 0xA700 out of space, 0x0110 anything else."""

from __future__ import annotations

import errno
import json
import os
from typing import Any

import pytest
import pytest_twisted

from tests.dicom_files import CT, MR, read, uids
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.conftest import Server
from tests.integration.observe import staging_files
from tests.integration.streaming import failure_reasons, fixed_length, sop_instance_uids
from twisted_stow.storage import filesystem

BOUNDARY = "storage-errors"


def failing(code: int) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


async def upload(client: Any, server: Server, parts: list[bytes]) -> tuple[int, Any, Any]:
    response = await client.post(
        server.url + "/studies",
        data=fixed_length(build_multipart(parts, BOUNDARY)),
        headers={"Content-Type": [multipart_content_type(BOUNDARY)]},
    )
    return response.code, response.headers, json.loads(await response.content())


@pytest.mark.parametrize(
    ("code", "reason"), [(errno.ENOSPC, 0xA700), (errno.EDQUOT, 0xA700), (errno.EIO, 0x0110)]
)
@pytest_twisted.ensureDeferred
async def test_staging_failure(
    stow_server: Server, client: Any, monkeypatch: pytest.MonkeyPatch, code: int, reason: int
) -> None:
    """Writing the staged part fails: 409, the reason in OtherFailuresSequence, no leftovers."""
    monkeypatch.setattr(filesystem.os, "writev", failing(code))
    status, headers, model = await upload(client, stow_server, [read(CT)])
    assert status == 409
    assert failure_reasons(model, "0008119A") == [reason]
    assert headers.getRawHeaders("warning")
    assert staging_files(stow_server.storage) == []


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, 0xA700), (errno.EIO, 0x0110)])
@pytest_twisted.ensureDeferred
async def test_commit_failure_names_the_instance(
    stow_server: Server, client: Any, monkeypatch: pytest.MonkeyPatch, code: int, reason: int
) -> None:
    """Linking into place fails: FailedSOPSequence with the UIDs; the next part is unaffected."""
    real_link = os.link
    ct_sop = uids(CT)[1]

    def link(src: Any, dst: Any) -> None:
        if ct_sop in str(dst):
            raise OSError(code, os.strerror(code))
        real_link(src, dst)

    monkeypatch.setattr(filesystem.os, "link", link)
    status, _, model = await upload(client, stow_server, [read(CT), read(MR)])
    assert status == 202
    failed = model["00081198"]["Value"]
    assert [item["00081155"]["Value"][0] for item in failed] == [ct_sop]
    assert failure_reasons(model) == [reason]
    assert sop_instance_uids(model) == [uids(MR)[1]]
    assert staging_files(stow_server.storage) == []
