"""Process settings, read once from the environment (``INFERGW_*``); missing ones fail fast."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "INFERGW_"


class SettingsError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Settings:
    policies_table: str
    keys_table: str
    bucket: str = ""
    jobs_table: str = ""
    limits_table: str = ""
    usage_table: str = ""
    jobs_queue_url: str = ""
    jobs_dlq_url: str = ""
    succeeded_topic_arn: str = ""
    failed_topic_arn: str = ""
    policy_cache_ttl_s: float = 10.0
    key_cache_ttl_s: float = 30.0
    # OIDC bearer tokens: all three or none.
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwks_url: str = ""
    jwt_algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwt_tenant_claim: str = "tenant"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def required(name: str) -> str:
            value = env.get(PREFIX + name)
            if not value:
                raise SettingsError(f"{PREFIX}{name} must be set")
            return value

        def number(name: str, default: float) -> float:
            raw = env.get(PREFIX + name)
            try:
                return default if raw is None else float(raw)
            except ValueError:
                raise SettingsError(f"{PREFIX}{name} must be a number, got {raw!r}") from None

        return cls(
            policies_table=required("POLICIES_TABLE"),
            keys_table=required("KEYS_TABLE"),
            bucket=env.get(PREFIX + "BUCKET", ""),
            jobs_table=env.get(PREFIX + "JOBS_TABLE", ""),
            limits_table=env.get(PREFIX + "LIMITS_TABLE", ""),
            usage_table=env.get(PREFIX + "USAGE_TABLE", ""),
            jobs_queue_url=env.get(PREFIX + "JOBS_QUEUE_URL", ""),
            jobs_dlq_url=env.get(PREFIX + "JOBS_DLQ_URL", ""),
            succeeded_topic_arn=env.get(PREFIX + "JOB_SUCCEEDED_TOPIC_ARN", ""),
            failed_topic_arn=env.get(PREFIX + "JOB_FAILED_TOPIC_ARN", ""),
            policy_cache_ttl_s=number("POLICY_CACHE_TTL_S", 10.0),
            key_cache_ttl_s=number("KEY_CACHE_TTL_S", 30.0),
            jwt_issuer=env.get(PREFIX + "JWT_ISSUER", ""),
            jwt_audience=env.get(PREFIX + "JWT_AUDIENCE", ""),
            jwks_url=env.get(PREFIX + "JWKS_URL", ""),
            jwt_algorithms=tuple(
                a.strip() for a in env.get(PREFIX + "JWT_ALGORITHMS", "RS256,ES256").split(",")
            ),
            jwt_tenant_claim=env.get(PREFIX + "JWT_TENANT_CLAIM", "tenant"),
        ).checked()

    def checked(self) -> Settings:
        oidc = (self.jwt_issuer, self.jwt_audience, self.jwks_url)
        if any(oidc) and not all(oidc):
            raise SettingsError(
                f"{PREFIX}JWT_ISSUER, {PREFIX}JWT_AUDIENCE and {PREFIX}JWKS_URL go together"
            )
        return self
