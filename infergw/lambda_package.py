"""Trim the botocore a Lambda package ships to the AWS services its functions call.

botocore ships the models of ~440 services. A client's creation lists every service
directory twice (once for its model, once for its endpoint rules) and parses the 1.2 MB
legacy ``endpoints.json``; with every service there, that is ~60 ms of each cold start,
spent on services the functions never call. The package keeps the services below
(and the credential chain's own), and ``endpoints.json`` keeps their entries only.

Run by the Makefile's ``build-*`` targets on a function's build directory; with
``--copy-installed``, it first copies in the botocore this interpreter has, as
``bench/cold_start.py`` and the tests do to measure and check what the package ships.
Standard library only: it runs under whatever Python drives ``sam build``.

    python infergw/lambda_package.py [--copy-installed] BUILD_DIR
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sys
from pathlib import Path

# What gateway/ and functions/ create clients for (tests/unit/test_lambda_package.py checks
# this against the code), and what botocore's credential providers may create: STS for
# assumed roles and web identity, SSO for SSO profiles.
FUNCTION_SERVICES = frozenset({"dynamodb", "s3", "sagemaker-runtime"})
CREDENTIAL_SERVICES = frozenset({"sts", "sso", "sso-oidc"})
KEEP = FUNCTION_SERVICES | CREDENTIAL_SERVICES


def _endpoint_prefix(service_dir: Path) -> str:
    """The key of a service in endpoints.json: its model's endpointPrefix, which is not
    always its name (sagemaker-runtime is ``runtime.sagemaker``)."""
    newest = max(v for v in service_dir.iterdir() if v.is_dir())
    plain = newest / "service-2.json"
    raw = (
        plain.read_bytes()
        if plain.exists()
        else gzip.decompress((newest / "service-2.json.gz").read_bytes())
    )
    prefix: str = json.loads(raw)["metadata"]["endpointPrefix"]
    return prefix


def slim_botocore(botocore_dir: Path, keep: frozenset[str] = KEEP) -> int:
    """Remove the data of every service not in ``keep`` from ``botocore_dir`` and their
    entries from its endpoints.json; return how many services were removed."""
    data = botocore_dir / "data"
    missing = {s for s in keep if not (data / s).is_dir()}
    if missing:
        raise SystemExit(f"botocore at {botocore_dir} has no model for {sorted(missing)}")
    removed = 0
    for entry in data.iterdir():
        if entry.is_dir() and entry.name not in keep:
            shutil.rmtree(entry)
            removed += 1
    prefixes = {_endpoint_prefix(data / s) for s in keep}
    endpoints_file = data / "endpoints.json"
    endpoints = json.loads(endpoints_file.read_text())
    for partition in endpoints["partitions"]:
        partition["services"] = {
            name: spec for name, spec in partition["services"].items() if name in prefixes
        }
    endpoints_file.write_text(json.dumps(endpoints, separators=(",", ":")))
    return removed


def copy_installed(build_dir: Path) -> Path:
    """A copy of the botocore this interpreter imports, in ``build_dir``, without bytecode."""
    spec = importlib.util.find_spec("botocore")
    if spec is None or spec.origin is None:
        raise SystemExit("botocore is not installed")
    target = build_dir / "botocore"
    shutil.copytree(Path(spec.origin).parent, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def main(argv: list[str]) -> None:
    copy = argv[:1] == ["--copy-installed"]
    if len(argv) != 1 + copy:
        raise SystemExit(__doc__)
    build_dir = Path(argv[-1])
    removed = slim_botocore(copy_installed(build_dir) if copy else build_dir / "botocore")
    print(f"botocore: {removed} unused service models removed, kept {sorted(KEEP)}")


if __name__ == "__main__":
    main(sys.argv[1:])
