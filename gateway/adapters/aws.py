"""AWS clients configured only through the standard environment (``AWS_ENDPOINT_URL``,
``AWS_ENDPOINT_URL_<SERVICE>``, region, credentials): the same code runs against the local
emulator, LocalStack or AWS.

botocore directly, not boto3: boto3 adds nothing these adapters use and costs a Lambda
cold start some 50 ms of imports (s3transfer and friends)."""

from __future__ import annotations

from typing import Any

import botocore.session
from botocore.config import Config

_session: botocore.session.Session | None = None


def session() -> botocore.session.Session:
    global _session
    if _session is None:
        _session = botocore.session.get_session()
    return _session


def region() -> str:
    return str(session().get_config_variable("region") or "us-east-1")


def client(service: str, **config: Any) -> Any:
    settings: dict[str, Any] = {
        "retries": {"mode": "standard", "max_attempts": 3},
        "max_pool_connections": 64,
        "tcp_keepalive": True,
        "connect_timeout": 2,
        "read_timeout": 10,
    }
    settings.update(config)
    return session().create_client(service, region_name=region(), config=Config(**settings))
