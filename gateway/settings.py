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
    jobs_queue_url: str = ""
    policy_cache_ttl_s: float = 10.0
    key_cache_ttl_s: float = 30.0

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
            jobs_queue_url=env.get(PREFIX + "JOBS_QUEUE_URL", ""),
            policy_cache_ttl_s=number("POLICY_CACHE_TTL_S", 10.0),
            key_cache_ttl_s=number("KEY_CACHE_TTL_S", 30.0),
        )
