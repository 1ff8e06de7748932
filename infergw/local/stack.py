"""``infergw up``: the whole local stack in the foreground, stopped cleanly by Ctrl-C.

Order: AWS emulator (moto server) -> template.yaml deployed through its CloudFormation ->
demo models built and uploaded -> endpoint host (model servers behind the SageMaker runtime
API) -> policies and a demo key -> the gateway's HTTP front end."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml

from gateway.adapters.dynamodb import DynamoDBKeyStore
from gateway.adapters.dynamodb_policies import DynamoDBPolicyStore
from infergw.demo.models import build_all
from infergw.local import processes, provision, wiring

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = PROJECT_ROOT / "template.yaml"
DEMO = Path(__file__).with_name("demo.yaml")
REGION = "us-east-1"
# Any credentials will do for the emulator; real AWS uses the caller's own.
EMULATOR_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass
class StackConfig:
    state_dir: Path = field(default_factory=lambda: Path.cwd() / ".infergw")
    gateway_port: int = 8000
    aws_port: int = 4566
    endpoint_port: int = 8090
    stack_name: str = "infergw-local"
    stage: str = "local"
    demo: Path = DEMO
    authorizer_ttl_s: float = 30.0
    policy_cache_ttl_s: float = 10.0
    workers: int = 1
    # template.yaml's JobNotificationTopics: "fifo" for exactly-once to SQS FIFO subscribers.
    notification_topics: str = "standard"
    # Short lease and visibility locally: a crashed worker's job resumes within seconds.
    worker_args: tuple[str, ...] = (
        "--wait",
        "2",
        "--visibility",
        "10",
        "--lease",
        "10",
        "--sweep-every",
        "5",
    )


@dataclass(frozen=True)
class Connection:
    gateway_url: str
    api_key: str
    keys: dict[str, str]  # API key by tenant
    aws_endpoint_url: str
    sagemaker_runtime_url: str
    region: str
    resources: dict[str, str]

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        path.chmod(0o600)  # it holds an API key


class LocalStack:
    def __init__(self, config: StackConfig, report: Callable[[str], None] = print) -> None:
        self.config = config
        self._report = report
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.connection: Connection | None = None
        self.env: dict[str, str] = {}  # what the stack's services run with

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Connection:
        cfg = self.config
        logs = cfg.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        aws_url = f"http://127.0.0.1:{cfg.aws_port}"
        runtime_url = f"http://127.0.0.1:{cfg.endpoint_port}"
        gateway_url = f"http://127.0.0.1:{cfg.gateway_port}"
        try:
            moto = self._spawn(
                "aws-emulator",
                ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(cfg.aws_port)],
                logs,
                env=self._base_env(),
            )
            models_dir = cfg.state_dir / "models"
            if not list(models_dir.glob("*/*/model.onnx")):
                build_all(models_dir, report=self._report)
            processes.wait_until_ready(aws_url + "/moto-api/", moto)
            session = boto3.session.Session(region_name=REGION, **_lower(EMULATOR_CREDENTIALS))
            cloudformation = session.client("cloudformation", endpoint_url=aws_url)
            outputs = provision.deploy_template(
                cloudformation,
                TEMPLATE,
                cfg.stack_name,
                {"Stage": cfg.stage, "JobNotificationTopics": cfg.notification_topics},
            )
            self._report(f"deployed template.yaml as stack '{cfg.stack_name}' on the emulator")
            applied = wiring.apply_skipped_wiring(
                wiring.load_template(TEMPLATE),
                cfg.stack_name,
                cloudformation,
                session.client("s3", endpoint_url=aws_url),
                session.client("sqs", endpoint_url=aws_url),
                session.client("sns", endpoint_url=aws_url),
            )
            for line in applied:
                self._report(f"wired {line}")
            s3 = session.client("s3", endpoint_url=aws_url)
            provision.upload_models(s3, outputs.bucket, models_dir)

            demo = yaml.safe_load(cfg.demo.read_text())
            env = {
                **self._base_env(),
                **outputs.environment(),
                "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": runtime_url,
                "INFERGW_POLICY_CACHE_TTL_S": str(cfg.policy_cache_ttl_s),
                "INFERGW_KEY_CACHE_TTL_S": str(cfg.authorizer_ttl_s),
            }
            self.env = env
            endpoints = [
                {
                    **e,
                    "model_uri": f"s3://{outputs.bucket}/"
                    + provision.model_key(e["model"], e["version"]),
                }
                for e in demo["endpoints"]
            ]
            endpoints_file = cfg.state_dir / "endpoints.json"
            endpoints_file.write_text(json.dumps({"endpoints": endpoints}, indent=2))
            host = self._spawn(
                "endpoint-host",
                [
                    "-m",
                    "infergw.local.endpoint_host",
                    "--config",
                    str(endpoints_file),
                    "--port",
                    str(cfg.endpoint_port),
                    "--log-dir",
                    str(logs),
                ],
                logs,
                env=env,
            )

            dynamodb = session.client("dynamodb", endpoint_url=aws_url)
            provision.put_policies(
                DynamoDBPolicyStore(dynamodb, outputs.policies_table), demo["policies"]
            )
            keys = provision.create_keys(
                DynamoDBKeyStore(dynamodb, outputs.keys_table), demo["tenants"]
            )
            api_key = keys[demo["tenants"][0]["tenant"]]
            gateway = self._spawn(
                "gateway",
                [
                    "-m",
                    "infergw.local.gateway_server",
                    "--port",
                    str(cfg.gateway_port),
                    "--authorizer-ttl",
                    str(cfg.authorizer_ttl_s),
                ],
                logs,
                env=env,
            )
            for i in range(cfg.workers):
                self._spawn(f"worker-{i}", ["-m", "async_worker", *cfg.worker_args], logs, env=env)
            processes.wait_until_ready(runtime_url + "/endpoints", host, timeout_s=120)
            processes.wait_until_ready(gateway_url + "/healthz", gateway)
        except BaseException:
            self.stop()
            raise
        self.connection = Connection(
            gateway_url=gateway_url,
            api_key=api_key,
            keys=keys,
            aws_endpoint_url=aws_url,
            sagemaker_runtime_url=runtime_url,
            region=REGION,
            resources=outputs.environment(),
        )
        self.connection.write(cfg.state_dir / "local.json")
        return self.connection

    def stop(self) -> None:
        # Reverse order: the front door closes before what it depends on.
        processes.stop([p for _, p in reversed(self._procs)])
        self._procs.clear()

    def dead(self) -> list[str]:
        return [name for name, p in self._procs if p.poll() is not None]

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return next(p for n, p in self._procs if n == name)

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ---------------------------------------------------------------------------
    def _spawn(
        self, name: str, args: list[str], logs: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        proc = processes.spawn(args, env=env, log=str(logs / f"{name}.log"))
        self._procs.append((name, proc))
        return proc

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "INFERGW_"))}
        env.update(EMULATOR_CREDENTIALS)
        env.update(
            {
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.config.aws_port}",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])
                ),
            }
        )
        return env


def _lower(credentials: dict[str, str]) -> dict[str, Any]:
    return {
        "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
    }
