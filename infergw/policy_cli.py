"""``infergw policy``, ``infergw keys`` and ``infergw usage``: declarative administration
over the admin HTTP API."""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from gateway.models import ModelPolicy
from infergw.client import Client

console = Console(highlight=False)


def _comparable(document: dict[str, Any]) -> dict[str, Any]:
    """A policy with every default filled in and the revision left out, so that a file
    and the stored item compare equal when they mean the same."""
    normal = ModelPolicy.model_validate({**document, "revision": 0}).model_dump(mode="json")
    normal.pop("revision")
    return normal


def _as_yaml(document: dict[str, Any] | None) -> list[str]:
    return [] if document is None else yaml.safe_dump(document, sort_keys=True).splitlines()


def load_policies(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    policies = doc.get("policies", []) if isinstance(doc, dict) else doc
    if not isinstance(policies, list) or not all(isinstance(p, dict) for p in policies):
        raise ValueError(f"{path}: expected a list of policies (or a 'policies:' key)")
    return policies


def apply(client: Client, documents: list[dict[str, Any]], dry_run: bool = False) -> int:
    """Create or update each policy; print a diff; no write when nothing changed."""
    changed = 0
    for document in documents:
        model = str(document.get("model", ""))
        try:
            desired = _comparable(document)
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
            console.print(f"[red]{model or '?'}: invalid ({fields})[/red]")
            return 1
        stored = client.policy(model)
        current = None if stored is None else _comparable(stored)
        if stored is not None and current == desired:
            console.print(f"[dim]{model}: unchanged (revision {stored['revision']})[/dim]")
            continue
        changed += 1
        verb = "create" if stored is None else "update"
        console.print(f"[bold]{model}: {verb}[/bold]")
        for line in difflib.unified_diff(
            _as_yaml(current), _as_yaml(desired), "stored", "file", lineterm="", n=2
        ):
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
            console.print(f"  [{style}]{line}[/{style}]")
        if not dry_run:
            revision = 0 if stored is None else int(stored["revision"])
            result = client.put_policy(model, {**document, "revision": revision})
            console.print(f"  [green]{verb}d, revision {result['revision']}[/green]")
    if changed == 0:
        console.print("nothing to change")
    return 0


def cmd_policy(args: argparse.Namespace, client: Client) -> int:
    if args.action == "apply":
        if not args.file:
            console.print("[red]policy apply needs -f FILE[/red]")
            return 2
        return apply(client, load_policies(Path(args.file)), dry_run=args.dry_run)
    if args.action == "list":
        table = Table("model", "version", "slo ms", "backends", "tenants", "revision")
        for p in client.policies():
            backends = [b for b in ("realtime", "serverless") if p.get(b)]
            backends += ["async"] if p.get("async_enabled") else []
            table.add_row(
                p["model"],
                p["version"],
                str(p["slo_ms"]),
                ",".join(backends),
                ",".join(p["allowed_tenants"]),
                str(p["revision"]),
            )
        console.print(table)
        return 0
    if not args.model:
        console.print(f"[red]policy {args.action} needs a model name[/red]")
        return 2
    if args.action == "get":
        policy = client.policy(args.model)
        if policy is None:
            console.print(f"[red]no policy for {args.model}[/red]")
            return 1
        print(yaml.safe_dump(policy, sort_keys=False), end="")
        return 0
    client.delete_policy(args.model)
    console.print(f"deleted {args.model}")
    return 0


def cmd_keys(args: argparse.Namespace, client: Client) -> int:
    if args.action == "create":
        if not args.tenant:
            console.print("[red]keys create needs --tenant[/red]")
            return 2
        created = client.create_key(
            args.tenant,
            args.scopes.split(","),
            args.tier,
            args.models.split(",") if args.models else None,
            environment="live" if args.live else "test",
        )
        console.print(
            f"key id   {created['key_id']}\ntenant   {created['tenant']}\n"
            f"scopes   {','.join(created['scopes'])}\ntier     {created['tier']}"
        )
        console.print("[bold]API key (shown once, store it now):[/bold]")
        print(created["api_key"])
        return 0
    if args.action == "revoke":
        if not args.key_id:
            console.print("[red]keys revoke needs a key id[/red]")
            return 2
        revoked = client.revoke_key(args.key_id)
        console.print(f"revoked {revoked['key_id']} at {revoked['revoked_at']}")
        return 0
    keys = client.keys(args.tenant)
    if args.json:
        print(json.dumps(keys, indent=2))
        return 0
    table = Table("key id", "tenant", "scopes", "tier", "created", "last used", "revoked")
    for k in keys:
        table.add_row(
            k["key_id"],
            k["tenant"],
            ",".join(k["scopes"]),
            k["tier"],
            k["created_at"],
            k.get("last_used_at") or "",
            k["revoked_at"] or "",
        )
    console.print(table)
    return 0


def cmd_usage(args: argparse.Namespace, client: Client) -> int:
    rows = client.usage(args.tenant, args.since)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table("day", "tenant", "model", "requests", "errors")
    for row in sorted(rows, key=lambda r: (r["day"], r["model"])):
        table.add_row(
            row["day"], row["tenant"], row["model"], str(row["requests"]), str(row["errors"])
        )
    console.print(table)
    return 0


def add_parsers(sub: Any, with_client: Any) -> None:
    policy = sub.add_parser("policy", help="model policies: apply a file, get, list, delete")
    policy.add_argument("action", choices=["apply", "get", "list", "delete"])
    policy.add_argument("model", nargs="?")
    policy.add_argument("-f", "--file", help="YAML with a list of policies (or 'policies:')")
    policy.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    policy.set_defaults(func=with_client(cmd_policy))

    keys = sub.add_parser("keys", help="API keys: create, list, revoke")
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("key_id", nargs="?")
    keys.add_argument("--tenant")
    keys.add_argument("--scopes", default="invoke", help="comma separated: invoke,jobs,admin")
    keys.add_argument("--tier", default="standard")
    keys.add_argument("--models", help="comma separated models the key may use (default all)")
    keys.add_argument("--json", action="store_true", help="list as JSON")
    keys.add_argument("--live", action="store_true", help="an igw_live_ key (default igw_test_)")
    keys.set_defaults(func=with_client(cmd_keys))

    usage = sub.add_parser("usage", help="requests per tenant, model and day")
    usage.add_argument("--tenant", help="another tenant (admin scope)")
    usage.add_argument("--since", help="YYYY-MM-DD")
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(func=with_client(cmd_usage))
