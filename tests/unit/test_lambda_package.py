"""The Lambda package's botocore keeps every service the functions call, and only those."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from infergw.lambda_package import FUNCTION_SERVICES, KEEP, copy_installed, slim_botocore
from tests.fresh_python import ROOT, run_fresh

SHIPPED = ("gateway", "functions")  # what the Makefile copies into the package


def test_every_client_the_functions_create_is_kept() -> None:
    created = {
        name
        for package in SHIPPED
        for source in (ROOT / package).rglob("*.py")
        for name in re.findall(r"aws\.client\(\s*\"([a-z0-9-]+)\"", source.read_text())
    }
    assert created == FUNCTION_SERVICES


@pytest.fixture(scope="module")
def slimmed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("package")
    assert slim_botocore(copy_installed(site)) > 400
    return site


def test_only_the_kept_services_and_their_endpoints_remain(slimmed: Path) -> None:
    data = slimmed / "botocore" / "data"
    assert {p.name for p in data.iterdir() if p.is_dir()} == KEEP
    endpoints = json.loads((data / "endpoints.json").read_text())
    aws = next(p for p in endpoints["partitions"] if p["partition"] == "aws")
    # Keyed by endpoint prefix, not service name: sagemaker-runtime is runtime.sagemaker.
    assert {"dynamodb", "s3", "runtime.sagemaker", "sts"} <= set(aws["services"])
    assert "sqs" not in aws["services"]
    assert aws["regions"], "the partitions' regions stay"


def test_the_slimmed_botocore_builds_every_kept_client_and_resolves_its_endpoint(
    slimmed: Path,
) -> None:
    script = f"""
import json, botocore, botocore.session, botocore.exceptions
assert botocore.__file__.startswith({str(slimmed)!r}), botocore.__file__
session = botocore.session.get_session()
urls = {{s: session.create_client(s, region_name="eu-west-1").meta.endpoint_url
        for s in {sorted(KEEP)!r}}}
try:
    session.create_client("sqs", region_name="eu-west-1")
    missing = None
except botocore.exceptions.UnknownServiceError as error:
    missing = type(error).__name__
print(json.dumps({{"urls": urls, "missing": missing}}))
"""
    env = {"PYTHONPATH": str(slimmed), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    result = run_fresh(script, env)
    assert result["urls"]["dynamodb"] == "https://dynamodb.eu-west-1.amazonaws.com"
    assert (
        result["urls"]["sagemaker-runtime"] == "https://runtime.sagemaker.eu-west-1.amazonaws.com"
    )
    assert result["urls"]["sts"] == "https://sts.eu-west-1.amazonaws.com"
    assert result["missing"] == "UnknownServiceError"


def test_a_service_botocore_lacks_stops_the_build(tmp_path: Path) -> None:
    (tmp_path / "data" / "dynamodb").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no model for"):
        slim_botocore(tmp_path)
