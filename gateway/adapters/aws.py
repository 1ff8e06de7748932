"""AWS clients configured only through the standard environment (``AWS_ENDPOINT_URL``,
``AWS_ENDPOINT_URL_<SERVICE>``, region, credentials): the same code runs against the local
emulator, LocalStack or AWS."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

_session: boto3.session.Session | None = None


def session() -> boto3.session.Session:
    global _session
    if _session is None:
        _session = boto3.session.Session()
    return _session


def client(service: str, **config: Any) -> Any:
    settings: dict[str, Any] = {
        "retries": {"mode": "standard", "max_attempts": 3},
        "max_pool_connections": 64,
        "tcp_keepalive": True,
        "connect_timeout": 2,
        "read_timeout": 10,
    }
    settings.update(config)
    return session().client(service, config=Config(**settings))
