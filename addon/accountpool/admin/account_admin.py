"""Deliberate account management: import, add, export and "refresh now".

These are the operator's actions (CLI and dashboard). Unlike routing, a permanent refresh
failure here *does* set `auth_blocked` (docs/BEHAVIOUR.md §9): the operator asked, so they get the verdict.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from accountpool.models import Account, AccountKind
from accountpool.storage import store
from accountpool.storage.secrets_store import Credentials, SecretsStore
from accountpool.upstream.jwt_claims import chatgpt_identity, token_expiry
from accountpool.upstream.oauth import DEFAULT_TOKEN_URL, RefreshError
from accountpool.upstream.token_rotation import rotate_tokens

EXPORT_FORMAT = "accountpool-export"
MAX_IMPORT_FILE_BYTES = 1_000_000


class ImportProblem(ValueError):
    """A file that cannot be imported; the message names the file and the reason, never a token."""


@dataclass(frozen=True)
class PendingAccount:
    """An account parsed from a file, validated before anything is written."""

    account: Account
    credentials: Credentials
    source: str


@dataclass(frozen=True)
class ImportResult:
    account: Account
    action: str  # "added" or "updated"
    source: str


def hint(secret: str) -> str:
    return secret[-4:] if len(secret) >= 12 else ""


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_IMPORT_FILE_BYTES:
            raise ImportProblem(f"{path}: larger than {MAX_IMPORT_FILE_BYTES} bytes, not an auth or export file")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImportProblem(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = getattr(exc, "pos", "?")
        raise ImportProblem(f"{path}: not valid JSON ({exc.__class__.__name__} at {where})") from None


def parse_codex_auth(data: Any, source: str, *, label: str | None = None) -> PendingAccount:
    """A Codex CLI `auth.json`: plan, e-mail and account id from the id_token, expiry from the access token."""
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, dict):
        raise ImportProblem(f"{source}: no `tokens` object (is this a Codex auth.json?)")
    access, refresh, id_token = tokens.get("access_token"), tokens.get("refresh_token"), tokens.get("id_token")
    if not all(isinstance(t, str) and t for t in (access, refresh, id_token)):
        raise ImportProblem(f"{source}: tokens.access_token, tokens.refresh_token and tokens.id_token are required")
    try:
        identity = chatgpt_identity(id_token)
        expires = token_expiry(access)
    except ValueError as exc:
        raise ImportProblem(f"{source}: {exc}") from None
    account_id = tokens.get("account_id") or identity.account_id
    if not account_id:
        raise ImportProblem(f"{source}: no ChatGPT account id in tokens.account_id or the id_token claims")
    default_label = identity.email or f"chatgpt-{account_id[-6:]}"
    account = Account(id=store.new_account_id(), label=label or default_label, kind=AccountKind.CHATGPT,
                      plan=identity.plan or "unknown", email=identity.email, upstream_account_id=account_id,
                      secret_hint=hint(access), access_expires_at=expires)
    return PendingAccount(account, Credentials(account.id, None, access, refresh, id_token), source)


def parse_export(data: dict[str, Any], source: str) -> list[PendingAccount]:
    pending = []
    entries = data.get("accounts")
    if not isinstance(entries, list):
        raise ImportProblem(f"{source}: `accounts` must be a list")
    for entry in entries:
        if not isinstance(entry, dict) or "label" not in entry or "kind" not in entry:
            raise ImportProblem(f"{source}: every exported account needs `label` and `kind`")
        secret = entry.get("secrets") or {}
        if not isinstance(secret, dict) or not all(isinstance(v, str) for v in secret.values()):
            raise ImportProblem(f"{source}: account {entry.get('label')!r}: `secrets` must map names to strings")
        fields = {k: v for k, v in entry.items() if k in Account.model_fields and k != "id"}
        try:
            account = Account(id=store.new_account_id(), **fields)
        except ValueError as exc:
            raise ImportProblem(f"{source}: account {entry.get('label')!r}: {exc}") from None
        creds = Credentials(account.id, secret.get("api_key"), secret.get("access_token"),
                            secret.get("refresh_token"), secret.get("id_token"))
        pending.append(PendingAccount(account, creds, source))
    return pending


def parse_import_path(path: Path) -> list[PendingAccount]:
    """Everything under `path`, validated as a whole first: one bad file means nothing is written."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".json" and p.is_file())
        if not files:
            raise ImportProblem(f"{path}: directory holds no .json files")
        return [item for f in files for item in parse_import_path(f)]
    data = _read_json(path)
    if isinstance(data, dict) and data.get("format") == EXPORT_FORMAT:
        return parse_export(data, str(path))
    return [parse_codex_auth(data, str(path))]


def _has_credentials(item: PendingAccount) -> bool:
    return bool(item.credentials.api_key or item.credentials.access_token)


def _find_twin(db: sqlite_utils.Database, acc: Account) -> Account | None:
    """The account this one is a re-import of: same ChatGPT identity, or an API key of the same label."""
    if acc.kind == AccountKind.CHATGPT:
        return store.find_chatgpt_account(db, acc.upstream_account_id, acc.email) if acc.upstream_account_id else None
    # Only another API key: a login that happens to carry the same label must never get a key
    # written over its tokens (that would lose its refresh token).
    rows = list(db.query("select * from accounts where label = ? and kind = ?", [acc.label, AccountKind.API_KEY.value]))
    return store.account_from_row(rows[0]) if rows else None


def apply_import(db: sqlite_utils.Database, secrets: SecretsStore, pending: list[PendingAccount], *,
                 actor: str = "cli") -> list[ImportResult]:
    # Refuse before writing anything: a new account without credentials could never serve
    # (an export made without --include-secrets restores metadata of existing accounts only).
    for item in pending:
        if not _has_credentials(item) and _find_twin(db, item.account) is None:
            raise ImportProblem(f"{item.source}: account {item.account.label!r} is not in this pool and the file "
                                "holds no credentials for it (export it with --include-secrets)")
    results = []
    for item in pending:
        acc = item.account
        twin = _find_twin(db, acc)
        if twin is not None:
            # Same identity: refresh its tokens and clear a block instead of adding a twin.
            changes: dict[str, Any] = {"plan": acc.plan, "email": acc.email}
            if _has_credentials(item):
                secrets.put(Credentials(twin.id, item.credentials.api_key, item.credentials.access_token,
                                        item.credentials.refresh_token, item.credentials.id_token))
                changes.update(access_expires_at=acc.access_expires_at, secret_hint=acc.secret_hint,
                               auth_blocked=False, auth_error=None)
            # else: metadata only; the stored tokens (and a block on them) stay as they are
            updated = store.update_account(db, twin.id, **changes)
            store.record_audit(db, actor=actor, action="reimport", target=twin.id,
                               before={"auth_blocked": twin.auth_blocked},
                               after={"auth_blocked": updated.auth_blocked,
                                      "credentials": _has_credentials(item)})
            results.append(ImportResult(updated, "updated", item.source))
            continue
        if list(db.query("select 1 from accounts where label = ?", [acc.label])):
            acc = acc.model_copy(update={"label": f"{acc.label}-{acc.id[-4:]}"})
        secrets.put(item.credentials)
        try:
            store.insert_account(db, acc)
        except Exception:
            secrets.delete(acc.id)
            raise
        store.record_audit(db, actor=actor, action="import", target=acc.id, before=None,
                           after={"label": acc.label, "kind": acc.kind.value})
        results.append(ImportResult(acc, "added", item.source))
    return results


def add_api_key(db: sqlite_utils.Database, secrets: SecretsStore, *, label: str, key: str,
                base_url: str | None = None, plan: str = "paid", organization: str | None = None,
                project: str | None = None, actor: str = "cli") -> Account:
    key = key.strip()
    if not key or any(c.isspace() for c in key):
        raise ImportProblem("the API key read from stdin is empty or contains whitespace")
    if base_url and not base_url.startswith(("http://", "https://")):
        raise ImportProblem(f"--base-url must start with http:// or https:// (got {base_url!r})")
    account = Account(id=store.new_account_id(), label=label, kind=AccountKind.API_KEY, plan=plan,
                      base_url=base_url.rstrip("/") if base_url else None, organization=organization,
                      project=project, secret_hint=hint(key))
    if list(db.query("select 1 from accounts where label = ?", [label])):
        raise store.Conflict(f"an account labelled {label!r} already exists")
    secrets.put(Credentials(account.id, api_key=key))
    try:
        store.insert_account(db, account)
    except Exception:
        secrets.delete(account.id)
        raise
    store.record_audit(db, actor=actor, action="add_key", target=account.id, before=None, after={"label": label})
    return account


def export_pool(db: sqlite_utils.Database, secrets: SecretsStore, *, include_secrets: bool = False) -> dict[str, Any]:
    """A JSON export; secrets only when asked explicitly (docs/BEHAVIOUR.md §3)."""
    accounts = []
    for acc in store.list_accounts(db):
        entry = acc.model_dump(mode="json")
        if include_secrets:
            creds = secrets.get(acc.id)
            if creds:
                entry["secrets"] = {k: getattr(creds, k) for k in ("api_key", "access_token", "refresh_token",
                                                                   "id_token") if getattr(creds, k)}
        accounts.append(entry)
    return {"format": EXPORT_FORMAT, "version": 1, "exported_at": time.time(),
            "includes_secrets": include_secrets, "accounts": accounts}


def refresh_now(db: sqlite_utils.Database, secrets: SecretsStore, account_id: str, *,
                token_url: str = DEFAULT_TOKEN_URL, actor: str = "cli") -> Account:
    """A deliberate refresh: success clears a block; a permanent failure sets `auth_blocked`.

    Blocking (HTTP and file lock): the dashboard calls it in a worker thread.
    """
    account = store.get_account(db, account_id)
    if account.kind != AccountKind.CHATGPT:
        raise ImportProblem(f"account {account.label!r} is an API key; only ChatGPT logins have tokens to refresh")
    try:
        saved = rotate_tokens(secrets.path, account.id, stale_generation=None, token_url=token_url)
    except RefreshError as exc:
        if exc.permanent:
            store.set_auth_blocked(db, account.id, str(exc), actor=actor)
        elif not account.auth_blocked:  # a transient failure must not replace why it is blocked
            store.update_account(db, account.id, auth_error=str(exc))
        raise
    changes: dict[str, Any] = {"access_expires_at": _expiry_or_none(saved.access_token),
                               "secret_hint": hint(saved.access_token or "")}
    if saved.id_token:
        try:
            ident = chatgpt_identity(saved.id_token)
            changes["plan"] = ident.plan or account.plan
        except ValueError:
            pass
    store.update_account(db, account.id, **changes)
    if account.auth_blocked or account.auth_error:
        store.set_auth_blocked(db, account.id, None, actor=actor)
    store.record_audit(db, actor=actor, action="refresh", target=account.id, before=None, after={"ok": True})
    return store.get_account(db, account.id)


def _expiry_or_none(token: str | None) -> float | None:
    try:
        return token_expiry(token) if token else None
    except ValueError:
        return None
