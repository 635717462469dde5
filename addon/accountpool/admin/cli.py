"""The `accountpool` command: set up the pool, manage accounts and client keys, run the demo.

Every failure is one line on stderr and a non-zero exit; secrets are read from stdin or the
environment, never from argv (argv is visible to every user of the machine via `ps`).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import sqlite_utils

from accountpool.admin import account_admin
from accountpool.storage import schema, store
from accountpool.storage.paths import default_db_path, secrets_path_for
from accountpool.storage.secrets_store import SecretsStore, SecretsStoreError
from accountpool.upstream.oauth import DEFAULT_TOKEN_URL, RefreshError

ADDON_SCRIPT = Path(__file__).parent.parent / "mitmproxy_script.py"


class CliError(Exception):
    pass


def _open(args: argparse.Namespace, *, create: bool = False) -> tuple[sqlite_utils.Database, SecretsStore]:
    db_path = Path(args.db)
    if not create and not db_path.exists():
        raise CliError(f"no pool database at {db_path} (run `accountpool init` first, or pass --db)")
    try:
        db = schema.connect(db_path)
    except sqlite3.DatabaseError as exc:
        raise CliError(f"{db_path} is not a usable pool database: {exc}") from None
    secrets = SecretsStore(secrets_path_for(db_path, args.secrets), create=True)
    return db, secrets


def cmd_init(args: argparse.Namespace) -> None:
    _db, secrets = _open(args, create=True)
    print(f"pool database: {Path(args.db).resolve()}")
    print(f"secrets store: {secrets.path.resolve()} (mode 0600, never served)")


def cmd_import(args: argparse.Namespace) -> None:
    db, secrets = _open(args)
    pending = account_admin.parse_import_path(Path(args.path))
    if args.label:
        if len(pending) != 1:
            raise CliError("--label applies to a single account; this path holds several")
        pending = [account_admin.PendingAccount(pending[0].account.model_copy(update={"label": args.label}),
                                                pending[0].credentials, pending[0].source)]
    for result in account_admin.apply_import(db, secrets, pending):
        acc = result.account
        print(f"{result.action} {acc.id}  {acc.label}  {acc.kind.value}  plan={acc.plan}")


def cmd_add_key(args: argparse.Namespace) -> None:
    db, secrets = _open(args)
    key = os.environ.get(args.from_env, "") if args.from_env else sys.stdin.readline()
    if args.from_env and not key:
        raise CliError(f"environment variable {args.from_env} is empty or unset")
    account = account_admin.add_api_key(db, secrets, label=args.label, key=key, base_url=args.base_url,
                                        plan=args.plan, organization=args.organization, project=args.project)
    print(f"added {account.id}  {account.label}  api_key  …{account.secret_hint}")


def _account_json(acc: store.Account, health: dict) -> dict:
    data = acc.model_dump(mode="json")
    h = health.get(acc.id)
    data["cooldown_until"] = h.cooldown_until if h else None
    data["cooldown_reason"] = h.cooldown_reason if h else None
    data["last_used_at"] = h.last_used_at if h else None
    return data


def cmd_list(args: argparse.Namespace) -> None:
    db, _ = _open(args)
    accounts = store.list_accounts(db)
    health = store.load_health(db)
    if args.json:
        print(json.dumps([_account_json(a, health) for a in accounts], indent=2))
        return
    if not accounts:
        print("no accounts (add one with `accountpool import` or `accountpool add-key`)")
        return
    now = time.time()
    for acc in accounts:
        h = health.get(acc.id)
        state = "enabled" if acc.enabled else "disabled"
        if acc.auth_blocked:
            state += f", auth_blocked ({acc.auth_error})"
        if h and h.cooldown_until and h.cooldown_until > now:
            state += f", cooling down {h.cooldown_until - now:.0f}s ({h.cooldown_class})"
        print(f"{acc.id}  {acc.label:24}  {acc.kind.value:8}  {acc.plan:10}  …{acc.secret_hint:4}  {state}")


def cmd_enable(args: argparse.Namespace, enabled: bool) -> None:
    db, _ = _open(args)
    acc = store.set_enabled(db, args.id, enabled, actor="cli")
    print(f"{acc.id}  {acc.label}  {'enabled' if acc.enabled else 'disabled'}")


def cmd_refresh(args: argparse.Namespace) -> None:
    db, secrets = _open(args)
    token_url = args.token_url or os.environ.get("ACCOUNTPOOL_OAUTH_TOKEN_URL") or DEFAULT_TOKEN_URL
    acc = account_admin.refresh_now(db, secrets, args.id, token_url=token_url)
    print(f"refreshed {acc.id}  {acc.label}  plan={acc.plan}")


def cmd_export(args: argparse.Namespace) -> None:
    db, secrets = _open(args)
    data = account_admin.export_pool(db, secrets, include_secrets=args.include_secrets)
    text = json.dumps(data, indent=2)
    if args.output:
        out = Path(args.output)
        fd = os.open(out, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600 if args.include_secrets else 0o644)
        if args.include_secrets:  # the creation mode does not apply to a file that already existed
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        print(f"exported {len(data['accounts'])} accounts to {out}"
              + (" (with secrets, mode 0600)" if args.include_secrets else " (no secrets)"))
    else:
        print(text)


def cmd_client_key(args: argparse.Namespace) -> None:
    db, _ = _open(args)
    if args.key_command == "create":
        key_id, key = store.create_client_key(db, args.label)
        print(f"created client key {key_id} ({args.label}); it is shown only this once:", file=sys.stderr)
        print(key)
    elif args.key_command == "list":
        rows = store.list_client_keys(db)
        if args.json:
            print(json.dumps(rows, indent=2))
        for row in [] if args.json else rows:
            state = "revoked" if row["revoked_at"] else "active"
            print(f"{row['id']}  {row['label']:24}  {row['prefix']}…  {state}")
    elif args.key_command == "revoke":
        store.revoke_client_key(db, args.id)
        print(f"revoked {args.id}")


def cmd_forecast(args: argparse.Namespace) -> None:
    from accountpool.admin.forecast_report import forecast_rows, forecast_table

    db, _ = _open(args)
    rows = forecast_rows(db)
    print(json.dumps(rows, indent=2) if args.json else forecast_table(rows))


def cmd_addon_path(args: argparse.Namespace) -> None:
    print(ADDON_SCRIPT.resolve())


def cmd_demo(args: argparse.Namespace) -> None:
    from accountpool.admin.demo import run_demo

    run_demo(db_path=Path(args.db), seconds=args.seconds, datasette_port=args.datasette_port,
             proxy_port=args.proxy_port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accountpool", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=str(default_db_path()),
                        help="pool database (default data/pool.db, env ACCOUNTPOOL_DB)")
    parser.add_argument("--secrets", default=None,
                        help="secrets store (default: beside the database, env ACCOUNTPOOL_SECRETS)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create the pool database and the secrets store").set_defaults(fn=cmd_init)
    p = sub.add_parser("import", help="import a Codex auth.json, a directory of them, or an export file")
    p.add_argument("path")
    p.add_argument("--label", help="label for a single imported account")
    p.set_defaults(fn=cmd_import)
    p = sub.add_parser("add-key", help="add an API-key account; the key is read from stdin")
    p.add_argument("--label", required=True)
    p.add_argument("--base-url", help="OpenAI-compatible base URL (default https://api.openai.com)")
    p.add_argument("--plan", default="paid", help="plan for ordering: paid (default) or free")
    p.add_argument("--organization")
    p.add_argument("--project")
    p.add_argument("--from-env", metavar="VAR", help="read the key from this environment variable instead")
    p.set_defaults(fn=cmd_add_key)
    p = sub.add_parser("list", help="list accounts (no secrets)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_list)
    for name, enabled in (("enable", True), ("disable", False)):
        p = sub.add_parser(name, help=f"{name} an account (id or label)")
        p.add_argument("id")
        p.set_defaults(fn=lambda a, e=enabled: cmd_enable(a, e))
    p = sub.add_parser("refresh", help="refresh a ChatGPT login's tokens now (a permanent failure blocks it)")
    p.add_argument("id")
    p.add_argument("--token-url", help="OAuth token endpoint (env ACCOUNTPOOL_OAUTH_TOKEN_URL)")
    p.set_defaults(fn=cmd_refresh)
    p = sub.add_parser("export", help="export the pool as JSON (no secrets unless --include-secrets)")
    p.add_argument("--include-secrets", action="store_true")
    p.add_argument("-o", "--output")
    p.set_defaults(fn=cmd_export)
    ck = sub.add_parser("client-key", help="create, list or revoke client keys")
    cks = ck.add_subparsers(dest="key_command", required=True)
    p = cks.add_parser("create")
    p.add_argument("--label", required=True)
    p = cks.add_parser("list")
    p.add_argument("--json", action="store_true")
    p = cks.add_parser("revoke")
    p.add_argument("id")
    ck.set_defaults(fn=cmd_client_key)
    sub.add_parser("addon-path", help="print the mitmproxy addon script path").set_defaults(fn=cmd_addon_path)
    p = sub.add_parser("forecast", help="usage windows: burn rate and when each runs out (from usage history)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_forecast)
    p = sub.add_parser("demo", help="run the simulated upstream, mitmdump with the addon and Datasette")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--proxy-port", type=int, default=8080)
    p.add_argument("--datasette-port", type=int, default=8001)
    p.set_defaults(fn=cmd_demo)
    return parser


def _fail(message: str) -> int:
    """One line, always: pydantic and OAuth messages may span several."""
    print(f"accountpool: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (CliError, store.NotFound, store.Conflict, account_admin.ImportProblem, SecretsStoreError,
            RefreshError, ValueError, OSError) as exc:
        return _fail(str(exc))
    except sqlite3.DatabaseError as exc:
        return _fail(f"database problem: {exc}")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
