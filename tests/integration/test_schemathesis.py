"""Schemathesis against the gateway's own /openapi.json, on a stack of its own (it creates
policies and keys at random): no 5xx, and every answer as the document says."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infergw.local import processes
from infergw.local.stack import LocalStack, StackConfig

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig(
        state_dir=tmp_path_factory.mktemp("schemathesis"),
        gateway_port=processes.free_port(),
        aws_port=processes.free_port(),
        endpoint_port=processes.free_port(),
        stack_name="infergw-st",
        workers=1,
    )
    with LocalStack(config, report=lambda _: None) as stack:
        yield stack


def test_the_api_honours_its_openapi_document(own_stack: LocalStack) -> None:
    conn = own_stack.connection
    assert conn is not None
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [
            str(st),
            "run",
            f"{conn.gateway_url}/openapi.json",
            "--url",
            conn.gateway_url,
            "-H",
            f"Authorization: Bearer {conn.api_key}",
            "--checks",
            "all",
            # Whether a well-formed body is accepted depends on the model's own policy
            # (feature count, async allowed), which an OpenAPI schema cannot express.
            "--exclude-checks",
            "positive_data_acceptance",
            # Revoking keys at random would revoke the very key the run uses.
            "--exclude-name",
            "DELETE /admin/keys/{key_id}",
            "--generation-with-security-parameters",
            "false",
            "--max-examples",
            "40",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "schemathesis.txt").write_text(result.stdout + result.stderr)
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    still = httpx.get(
        f"{conn.gateway_url}/v1/models", headers={"Authorization": f"Bearer {conn.api_key}"}
    )
    assert still.status_code == 200, "the run must not have revoked its own key"
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated and int(generated.group(1)) >= 300, summary  # it really ran
