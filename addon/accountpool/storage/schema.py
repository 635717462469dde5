"""The schema of `pool.db`, the database Datasette serves.

It holds no secret by construction: credentials live in `secrets_store`. The schema evolves
through named migrations (sqlite-utils' `Migrations`, recorded in `_sqlite_migrations`), so a
file made by an older version opens and upgrades in place; never edit a released migration,
append a new one.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import sqlite_utils

MIGRATIONS = sqlite_utils.Migrations("accountpool")

BUSY_TIMEOUT_MS = 5_000
"""mitmproxy, the CLI and Datasette all write; waiting beats failing on a short lock."""

SECRET_TABLE_NAMES = frozenset({"secrets", "tokens", "credentials"})
"""Table names that must never appear in a served database (the plugin refuses to start)."""


@MIGRATIONS()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["accounts"].create(
        {
            "id": str,
            "label": str,
            "kind": str,
            "plan": str,
            "email": str,
            "upstream_account_id": str,
            "base_url": str,
            "organization": str,
            "project": str,
            # NULL reads as enabled: records written before the column existed stay routable.
            "enabled": int,
            "auth_blocked": int,
            "auth_error": str,
            "secret_hint": str,
            "access_expires_at": float,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        not_null={"label", "kind"},
        defaults={"auth_blocked": 0, "plan": "unknown"},
    )
    db["accounts"].create_index(["label"], unique=True)
    db["accounts"].create_index(["kind", "upstream_account_id"])

    db["account_health"].create(
        {
            "account_id": str,
            "cooldown_until": float,
            "cooldown_reason": str,
            "cooldown_class": str,
            "last_error": str,
            "last_error_class": str,
            "last_error_at": float,
            "last_used_at": float,
            "primary_used_percent": float,
            "primary_window_minutes": int,
            "primary_reset_at": float,
            "secondary_used_percent": float,
            "secondary_window_minutes": int,
            "secondary_reset_at": float,
            "usage_seen_at": float,
            "rl_limit_requests": int,
            "rl_remaining_requests": int,
            "rl_reset_requests_s": float,
            "rl_limit_tokens": int,
            "rl_remaining_tokens": int,
            "rl_reset_tokens_s": float,
            "ratelimit_seen_at": float,
        },
        pk="account_id",
    )
    db["model_cooldowns"].create(
        {"account_id": str, "model": str, "until": float, "reason": str},
        pk=("account_id", "model"),
    )
    db["client_keys"].create(
        {
            "id": str,
            "label": str,
            "key_hash": str,
            "prefix": str,
            "created_at": float,
            "revoked_at": float,
            "last_used_at": float,
        },
        pk="id",
        not_null={"label", "key_hash"},
    )
    db["client_keys"].create_index(["key_hash"], unique=True)
    db["settings"].create({"key": str, "value": str, "updated_at": float}, pk="key")
    db["pool_state"].create({"key": str, "value": str, "updated_at": float}, pk="key")
    db["audit_log"].create(
        {
            "id": int,
            "at": float,
            "actor": str,
            "action": str,
            "target": str,
            "before": str,
            "after": str,
        },
        pk="id",
    )
    db["audit_log"].create_index(["at"])

    db["requests"].create(
        {
            "id": str,
            "started_at": float,
            "finished_at": float,
            "client_key_label": str,
            "method": str,
            "endpoint": str,
            "model": str,
            "stream": int,
            "request_bytes": int,
            "account_id": str,
            "attempts": int,
            "status": int,
            "outcome": str,
            "failure_brief": str,
            "total_ms": float,
            "upstream_headers_ms": float,
            "first_chunk_ms": float,
            "stream_ms": float,
            "input_tokens": int,
            "cached_input_tokens": int,
            "output_tokens": int,
            "reasoning_tokens": int,
            "total_tokens": int,
            "session_key": str,
        },
        pk="id",
    )
    for columns in (["started_at"], ["outcome", "started_at"], ["account_id", "started_at"]):
        db["requests"].create_index(columns)
    db["attempts"].create(
        {
            "request_id": str,
            "n": int,
            "account_id": str,
            "status": int,
            "class": str,
            "ms": float,
            "refreshed": int,
            "started_at": float,
        },
        pk=("request_id", "n"),
    )
    db["attempts"].create_index(["started_at"])
    db["inflight"].create(
        {
            "request_id": str,
            "started_at": float,
            "updated_at": float,
            "pid": int,
            "client_key_label": str,
            "method": str,
            "endpoint": str,
            "model": str,
            "stream": int,
            "account_id": str,
            "attempts": int,
            "phase": str,
        },
        pk="request_id",
    )


def _ensure_wal(db: sqlite_utils.Database) -> None:
    """Switch to WAL. The switch needs an exclusive lock and SQLite does not wait for it through the
    busy handler, so a process opening a fresh file while another one does gets "database is locked":
    retry for as long as `busy_timeout` would have waited."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while db.journal_mode != "wal":
        try:
            db.enable_wal()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def connect(path: str | Path, *, check_same_thread: bool = True) -> sqlite_utils.Database:
    """Open `pool.db`, creating or migrating it; WAL so Datasette reads while the proxy writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=check_same_thread,
                           isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db = sqlite_utils.Database(conn)
    _ensure_wal(db)
    conn.execute("PRAGMA synchronous = NORMAL")
    if MIGRATIONS.pending(db):
        # Several processes may open a fresh file at once (the demo starts mitmdump and Datasette
        # together): take the write lock first, then re-check, so exactly one of them migrates.
        # (A future non-transactional migration, e.g. VACUUM, would need to run outside this.)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if MIGRATIONS.pending(db):
                MIGRATIONS.apply(db)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return db


def open_existing(path: str | Path, *, check_same_thread: bool = True) -> sqlite_utils.Database:
    """Open a pool database that must already exist (the proxy refuses to invent an empty pool)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no pool database at {path} (run `accountpool init` first)")
    try:
        return connect(path, check_same_thread=check_same_thread)
    except sqlite3.DatabaseError as exc:
        raise RuntimeError(f"{path} is not a usable pool database: {exc}") from exc


# ---------------------------------------------------------------- m002: per-minute rollup of `requests`

LATENCY_BUCKET_RATIO = 1.2
"""Upper bounds of the latency histogram grow by this factor: percentiles read from the rollup are
within about ±10 % (the dashboard interpolates inside a bucket, so usually much closer)."""

LATENCY_DIMS = {
    "total_ms": "total_ms",
    "upstream_headers_ms": "upstream_headers_ms",
    "first_chunk_ms": "first_chunk_ms",
    "stream_ms": "stream_ms",
}
"""`request_minute_stats.dim` → the `requests` column whose histogram it holds."""

COUNT_DIMS = {
    "all": "''",
    "model": "coalesce({r}.model, '')",
    "account": "coalesce({r}.account_id, '')",
    "endpoint": "coalesce({r}.endpoint, '')",
    "client_key": "coalesce({r}.client_key_label, '')",
    "status": "coalesce({r}.status, '')",
    "outcome": "coalesce({r}.outcome, '')",
}
"""`request_minute_stats.dim` → the SQL expression (over a `requests` row `{r}`) giving its key."""

_TOKEN_COLUMNS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens")


def latency_bucket_bounds() -> list[tuple[int, float, float]]:
    """(bucket, lower_ms, upper_ms): [0, 1] ms, then geometric up to about an hour, then everything above."""
    bounds, lower, upper, bucket = [], 0.0, 1.0, 0
    while upper < 3_600_000:
        bounds.append((bucket, lower, upper))
        bucket, lower, upper = bucket + 1, upper, round(upper * LATENCY_BUCKET_RATIO, 3)
    bounds.append((bucket, lower, 1e15))
    return bounds


def _latency_bucket_sql(value: str) -> str:
    return (f"(SELECT bucket FROM latency_buckets WHERE upper_ms >= max({value}, 0) "
            "ORDER BY upper_ms LIMIT 1)")


def _stats_rows_sql(r: str) -> str:
    """One `(dim, key, tokens?)` row per count dimension and per latency histogram a `requests` row feeds."""
    parts = [f"SELECT '{dim}' AS dim, CAST({expr.format(r=r)} AS TEXT) AS key, 1 AS t"
             for dim, expr in COUNT_DIMS.items()]
    parts += [f"SELECT '{dim}', CAST({_latency_bucket_sql(f'{r}.{col}')} AS TEXT), 0 "
              f"WHERE {r}.{col} IS NOT NULL" for dim, col in LATENCY_DIMS.items()]
    return " UNION ALL ".join(parts)


_STATS_INSERT = (f"INSERT INTO request_minute_stats (minute, dim, key, requests, failures, "
                 f"{', '.join(_TOKEN_COLUMNS)})")


def _stats_apply_sql(r: str, sign: int) -> str:
    """Add (sign 1) or subtract (sign -1) one `requests` row `{r}` to/from its minute."""
    failed = f"({r}.outcome IS NOT NULL AND {r}.outcome != 'ok')"
    tokens = ", ".join(f"{sign} * d.t * coalesce({r}.{c}, 0)" for c in _TOKEN_COLUMNS)
    sums = ", ".join(f"{c} = {c} + excluded.{c}" for c in _TOKEN_COLUMNS)
    return (
        f"{_STATS_INSERT} "
        f"SELECT CAST({r}.started_at / 60 AS INTEGER) * 60, d.dim, d.key, {sign}, {sign} * {failed}, "
        f"{tokens} "
        f"FROM ({_stats_rows_sql(r)}) AS d WHERE true "
        f"ON CONFLICT (minute, dim, key) DO UPDATE SET requests = requests + excluded.requests, "
        f"failures = failures + excluded.failures, {sums};"
    )


def _stats_prune_sql(r: str) -> str:
    return (f"DELETE FROM request_minute_stats WHERE minute = CAST({r}.started_at / 60 AS INTEGER) * 60 "
            "AND requests <= 0;")


@MIGRATIONS()
def m002_request_minute_stats(db: sqlite_utils.Database) -> None:
    """A per-minute rollup of `requests`, kept exact by triggers: the 24 h dashboard reads 10⁵ rows, not 10⁶.

    `request_minute_stats` holds, per minute (`minute` = Unix seconds of its start, by `started_at`):
    - counts: `dim` in `all` (key ''), `model`, `account` (account id), `endpoint`, `client_key`, `status`,
      `outcome` → `requests`, `failures` (outcome not 'ok') and the five token sums;
    - latency histograms: `dim` in `total_ms`, `upstream_headers_ms`, `first_chunk_ms`, `stream_ms`,
      `key` = a `latency_buckets.bucket` → `requests` = how many rows fell in that bucket.
    Triggers on `requests` (insert, delete, update) maintain it in the writer's own transaction, so
    every writer (the proxy, pruning, tests, hand-made SQL) keeps it consistent without knowing of it.
    """
    db["latency_buckets"].create({"bucket": int, "lower_ms": float, "upper_ms": float}, pk="bucket")
    db["latency_buckets"].insert_all(
        [{"bucket": b, "lower_ms": lo, "upper_ms": hi} for b, lo, hi in latency_bucket_bounds()])
    db["latency_buckets"].create_index(["upper_ms"], unique=True)
    # WITHOUT ROWID: rows are clustered by (minute, dim, key), so a window is one contiguous range.
    db.execute("CREATE TABLE request_minute_stats (minute INTEGER NOT NULL, dim TEXT NOT NULL, key TEXT NOT NULL, "
               "requests INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, "
               + ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in _TOKEN_COLUMNS)
               + ", PRIMARY KEY (minute, dim, key)) WITHOUT ROWID")
    db["request_minute_stats"].create_index(["dim", "minute"])
    db.execute(f"CREATE TRIGGER request_minute_stats_insert AFTER INSERT ON requests "
               f"WHEN NEW.started_at IS NOT NULL BEGIN {_stats_apply_sql('NEW', 1)} END")
    db.execute(f"CREATE TRIGGER request_minute_stats_delete AFTER DELETE ON requests "
               f"WHEN OLD.started_at IS NOT NULL BEGIN {_stats_apply_sql('OLD', -1)} "
               f"{_stats_prune_sql('OLD')} END")
    db.execute(f"CREATE TRIGGER request_minute_stats_update AFTER UPDATE ON requests BEGIN "
               f"{_stats_apply_sql('OLD', -1)} {_stats_apply_sql('NEW', 1)} {_stats_prune_sql('OLD')} END")
    # Rows written before this migration: aggregate them once, dimension by dimension.
    failed = "(r.outcome IS NOT NULL AND r.outcome != 'ok')"
    minute = "CAST(r.started_at / 60 AS INTEGER) * 60"
    insert = _STATS_INSERT + " "
    token_sums = ", ".join(f"sum(coalesce(r.{c}, 0))" for c in _TOKEN_COLUMNS)
    for dim, expr in COUNT_DIMS.items():
        db.execute(insert + f"SELECT {minute}, '{dim}', CAST({expr.format(r='r')} AS TEXT), count(*), "
                   f"sum({failed}), {token_sums} FROM requests r WHERE r.started_at IS NOT NULL "
                   "GROUP BY 1, 3")
    zeros = ", ".join("0" for _ in _TOKEN_COLUMNS)
    for dim, col in LATENCY_DIMS.items():
        db.execute(insert + f"SELECT {minute}, '{dim}', CAST({_latency_bucket_sql(f'r.{col}')} AS TEXT), "
                   f"count(*), 0, {zeros} FROM requests r "
                   f"WHERE r.started_at IS NOT NULL AND r.{col} IS NOT NULL GROUP BY 1, 3")


# ---------------------------------------------------------------- m003: recovery state and queue waits


@MIGRATIONS()
def m003_recovery_and_queue_wait(db: sqlite_utils.Database) -> None:
    """Half-open recovery state in `account_health` and each request's queue wait (issue 13).

    - `account_health`: `recovering`, `failure_streak`, `streak_class`, `transient_count`, `transient_since`,
      `recovery_at` (see `routing/recovery.py`), and the half-open trial's lease `trial_until` / `trial_owner`, which
      only `trial_claims` writes (a conditional UPDATE: one trial across every process sharing the pool).
    - `requests.queue_wait_ms`: how long the request waited for an account (NULL: it never waited). The
      per-minute rollup does not carry it: its triggers belong to m002, and the few queued rows are read
      from `requests` through a partial index instead.
    """
    health = db["account_health"]
    for name, kind in (("recovering", int), ("failure_streak", int), ("streak_class", str),
                       ("transient_count", int), ("transient_since", float), ("recovery_at", float),
                       ("trial_until", float), ("trial_owner", str)):
        health.add_column(name, kind)
    db["requests"].add_column("queue_wait_ms", float)
    db.execute("CREATE INDEX requests_queued ON requests (started_at, queue_wait_ms) "
               "WHERE queue_wait_ms IS NOT NULL")


# ---------------------------------------------------------------- m004: usage history for forecasts


@MIGRATIONS()
def m004_usage_samples(db: sqlite_utils.Database) -> None:
    """History of the usage windows, so burn rates and exhaustion times can be forecast (`accountpool/forecast.py`).

    One row per account, window and observation time: `window` is `primary` / `secondary` (Codex 5-hour and
    weekly) or `requests` / `tokens` (`x-ratelimit-*`, used % = 100 × (limit − remaining) ÷ limit). The
    metrics writer samples it (`usage_history.UsageSampler`), so a busy proxy adds about one row per
    account and window per minute; pruned with the metrics retention. No secret: ids and numbers only.
    """
    db["usage_samples"].create(
        {"account_id": str, "window": str, "at": float, "used_percent": float, "reset_at": float,
         "window_minutes": int},
        pk=("account_id", "window", "at"),
    )
    db["usage_samples"].create_index(["at"])


# ---------------------------------------------------------------- m005: a sliding window for transient errors


@MIGRATIONS()
def m005_transient_times(db: sqlite_utils.Database) -> None:
    """`account_health.transient_times` (JSON list of the recent `upstream_error` times) replaces m003's
    `transient_count` / `transient_since`: a count since the first error is a fixed window that restarts when
    it runs out, so errors at 0, 55, 62 and 64 s (three within 9 s) never reached a threshold of 3 in 60 s.
    The two old columns go (kept unused where SQLite is older than 3.35, which cannot drop a column); what they
    held is at most a window's worth of noise, so nothing is carried over. `ALTER TABLE`, not sqlite-utils'
    `transform`: that one commits on its own, and migrations run inside the opener's transaction."""
    db["account_health"].add_column("transient_times", str)
    if sqlite3.sqlite_version_info >= (3, 35):
        for column in ("transient_count", "transient_since"):
            db.execute(f"ALTER TABLE account_health DROP COLUMN {column}")
