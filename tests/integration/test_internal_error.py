"""An unforeseen error: 500 with a problem document, and the server keeps serving."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from tests.dicom_files import CT, MR, read
from tests.helpers import build_multipart, multipart_content_type
from tests.integration.conftest import Server
from tests.integration.streaming import fixed_length
from twisted_stow import app as app_module

BOUNDARY = "internal-error"


async def upload(client: Any, server: Server, data: bytes) -> tuple[int, Any, bytes]:
    response = await client.post(
        server.url + "/studies",
        data=fixed_length(build_multipart([data], BOUNDARY)),
        headers={"Content-Type": [multipart_content_type(BOUNDARY)]},
    )
    return response.code, response.headers, await response.content()


@pytest_twisted.ensureDeferred
async def test_bug_in_response_building_is_500_problem_json(
    stow_server: Server, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure inside the route becomes 500 application/problem+json, no traceback leaked."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(app_module, "build_store_response", broken)
    code, headers, content = await upload(client, stow_server, read(CT))
    assert code == 500
    assert headers.getRawHeaders("content-type") == ["application/problem+json"]
    problem = json.loads(content)
    assert problem["status"] == 500
    assert b"secret internal detail" not in content
    monkeypatch.undo()
    code, _, content = await upload(client, stow_server, read(MR))
    assert code == 200, content
