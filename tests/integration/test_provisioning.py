"""The emulator is provisioned from template.yaml itself, and the template is valid."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import boto3

from functions.api.app import PUBLIC_PATHS
from infergw.lambda_package import KEEP
from infergw.local.stack import TEMPLATE, Connection


def test_template_passes_cfn_lint_with_the_sam_transform() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cfn-lint")), str(TEMPLATE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_routes_in_the_template_match_the_api() -> None:
    text = TEMPLATE.read_text()
    # Events with 'Authorizer: NONE' are the routes API Gateway leaves open.
    open_paths = set(
        re.findall(r"Path: (\S+)\n\s+Method: \w+\n\s+Auth:\n\s+Authorizer: NONE", text)
    )
    assert open_paths == set(PUBLIC_PATHS)


def test_stack_resources_exist_on_the_emulator(
    aws: boto3.session.Session, conn: Connection
) -> None:
    dynamodb = aws.client("dynamodb", endpoint_url=conn.aws_endpoint_url)
    tables = set(dynamodb.list_tables()["TableNames"])
    for variable in (
        "INFERGW_POLICIES_TABLE",
        "INFERGW_KEYS_TABLE",
        "INFERGW_JOBS_TABLE",
        "INFERGW_LIMITS_TABLE",
    ):
        assert conn.resources[variable] in tables
    s3 = aws.client("s3", endpoint_url=conn.aws_endpoint_url)
    keys = {
        o["Key"] for o in s3.list_objects_v2(Bucket=conn.resources["INFERGW_BUCKET"])["Contents"]
    }
    assert {"models/digits/1/model.onnx", "models/breast-cancer/1/model.onnx"} <= keys


def test_model_artifacts_are_deterministic(tmp_path: Path, models_dir: Path) -> None:
    from infergw.demo.models import build_digits

    rebuilt = build_digits()
    assert rebuilt.onnx == (models_dir / "digits" / "1" / "model.onnx").read_bytes()
    assert rebuilt.accuracy >= 0.9


def _make(target: str) -> subprocess.CompletedProcess[str]:
    root = TEMPLATE.parent
    return subprocess.run(
        ["make", "-s", target], cwd=root, capture_output=True, text=True, timeout=900
    )


def test_sam_validate_lint() -> None:
    result = _make("sam-validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_sam_build_packages_every_function_lean() -> None:
    result = _make("sam-build")
    assert result.returncode == 0, result.stdout + result.stderr
    build = TEMPLATE.parent / ".aws-sam" / "build"
    for function in ("ApiFunction", "AuthorizerFunction", "SweeperFunction"):
        contents = {p.name for p in (build / function).iterdir()}
        assert {"gateway", "functions", "aws_lambda_powertools", "pydantic"} <= contents
        # Built for the functions' arm64 runtime, and without the heavy numeric stack.
        assert any(
            p.name.endswith("aarch64-linux-gnu.so") for p in (build / function).rglob("*.so")
        )
        assert not contents & {"numpy", "onnxruntime", "sklearn", "async_worker"}
        # Compiled ahead: a read-only code directory would make every cold start compile.
        compiled = build / function / "functions" / "__pycache__"
        assert list(compiled.glob("bootstrap.cpython-311.pyc")), sorted(compiled.iterdir())
        assert list((build / function / "botocore" / "__pycache__").glob("client.cpython-311.pyc"))
        # botocore keeps the models of the services the functions call, not all ~440.
        data = build / function / "botocore" / "data"
        assert {p.name for p in data.iterdir() if p.is_dir()} == KEEP
