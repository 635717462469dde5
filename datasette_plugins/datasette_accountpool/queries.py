"""The dashboard's SQL: plain functions over a `sqlite3.Connection` (run via `db.execute_fn`).

Kept fast over millions of `requests` rows (issue 6: overview < 300 ms over 1 M rows):
- a window with at most `RAW_ROW_LIMIT` rows is read from `requests` through the `started_at`
  index, and its percentiles are exact (nearest rank, computed in SQL with window functions);
- a larger window is read from `request_minute_stats`, the per-minute rollup that triggers keep
  exact (schema migration m002): counts and tokens are exact at minute granularity (the window
  starts at the minute boundary), percentiles come from its latency histograms (interpolated
  inside a bucket, within a few per cent);
- lists (recent requests, recent failures, in-flight, audit) are index range scans with a LIMIT.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import Any

import sqlite_utils
from accountpool.models import FailureClass
from accountpool.routing import recovery
from accountpool.storage import store

RAW_ROW_LIMIT = 10_000
"""Above this many rows in the window, aggregates come from the rollup instead of `requests`."""

PERCENTILES = (50, 90, 95)
LATENCY_COLUMNS = ("total_ms", "upstream_headers_ms", "first_chunk_ms", "stream_ms")
TOKEN_COLUMNS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens")
TOP_DIMS = {"model": "model", "account": "account_id", "endpoint": "endpoint", "client_key": "client_key_label"}
COUNT_DIMS = {**TOP_DIMS, "status": "status", "outcome": "outcome"}
TOP_N = 8
LIST_N = 20
FAILURE_OUTCOMES = tuple(c.value for c in FailureClass if c is not FailureClass.OK)
ROLLUP_TABLE = "request_minute_stats"


@dataclass(frozen=True)
class Window:
    name: str
    seconds: int
    step: int
    """Timeline bucket width in seconds (a multiple of 60; below 60 only when read from `requests`)."""
    label: str


WINDOWS = {
    "10m": Window("10m", 600, 30, "10 minutes"),
    "1h": Window("1h", 3_600, 60, "1 hour"),
    "24h": Window("24h", 86_400, 900, "24 hours"),
}
DEFAULT_WINDOW = "1h"

_FAILED = "(outcome IS NOT NULL AND outcome != 'ok')"


def _rows(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def has_rollup(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        [ROLLUP_TABLE]).fetchone() is not None


def nearest_rank(p: float, n: int) -> int:
    """1-based rank of the p-th percentile among n sorted values (the nearest-rank definition)."""
    return max(1, math.ceil(p * n / 100))


def account_labels(conn: sqlite3.Connection) -> dict[str, str]:
    return {r["id"]: r["label"] for r in _rows(conn, "SELECT id, label FROM accounts")}


# ---------------------------------------------------------------- overview


def overview(conn: sqlite3.Connection, window: Window, now: float | None = None, *,
             raw_row_limit: int = RAW_ROW_LIMIT) -> dict[str, Any]:
    now = time.time() if now is None else now
    since = now - window.seconds
    # Counting stops at the limit: deciding must not cost a scan of a million index entries.
    count = conn.execute("SELECT count(*) FROM (SELECT 1 FROM requests WHERE started_at >= ? LIMIT ?)",
                         [since, raw_row_limit + 1]).fetchone()[0]
    use_rollup = count > raw_row_limit and has_rollup(conn)
    if use_rollup and window.step < 60:
        window = replace(window, step=60)  # the rollup cannot split a minute
    timeline_start = math.floor(since / window.step) * window.step
    if use_rollup:
        aggregates = _rollup_aggregates(conn, window, since, now, timeline_start)
    else:
        aggregates = _raw_aggregates(conn, window, since, now, timeline_start)
    labels = account_labels(conn)
    for row in aggregates["top"]["account"]:
        row["label"] = labels.get(row["key"], row["key"] or "—")
    return {
        "window": window.name,
        "window_label": window.label,
        "now": now,
        "since": since,
        "source": "rollup" if use_rollup else "requests",
        "exact": not use_rollup,
        **aggregates,
        "inflight": inflight(conn, labels),
        "queue": queue_stats(conn, since),
        "attempts": attempt_failures(conn, since, labels),
        "recent": recent_requests(conn, labels),
        "recent_failures": recent_failures(conn, since, labels),
        "audit": audit_entries(conn, labels),
    }


def _totals(raw: dict[str, Any]) -> dict[str, Any]:
    requests_n = raw.get("requests") or 0
    failures = raw.get("failures") or 0
    totals = {"requests": requests_n, "failures": failures, "successes": raw.get("successes") or 0}
    totals.update({c: raw.get(c) or 0 for c in TOKEN_COLUMNS})
    totals["failure_rate"] = failures / requests_n if requests_n else None
    totals["cache_hit_rate"] = (totals["cached_input_tokens"] / totals["input_tokens"]
                                if totals["input_tokens"] else None)
    return totals


def _empty_timeline(window: Window, start: float, now: float) -> list[dict[str, Any]]:
    n = max(1, math.ceil((now - start) / window.step))
    return [{"start": start + i * window.step, "requests": 0, "failures": 0, "p95_ms": None} for i in range(n)]


def _raw_aggregates(conn: sqlite3.Connection, window: Window, since: float, now: float,
                    timeline_start: float) -> dict[str, Any]:
    sums = ", ".join(f"coalesce(sum({c}), 0) AS {c}" for c in TOKEN_COLUMNS)
    counts = ", ".join(f"count({c}) AS n_{c}" for c in LATENCY_COLUMNS)
    head = _rows(conn, f"SELECT count(*) AS requests, coalesce(sum(outcome = 'ok'), 0) AS successes, "
                       f"coalesce(sum({_FAILED}), 0) AS failures, {sums}, {counts} "
                       "FROM requests WHERE started_at >= ?", [since])[0]
    latency: dict[str, dict[str, float | None]] = {}
    for column in LATENCY_COLUMNS:
        wanted = PERCENTILES if column == "total_ms" else (95,)
        n = head[f"n_{column}"]
        ranks = {p: nearest_rank(p, n) for p in wanted}
        values: dict[int, float] = {}
        if n:
            marks = ",".join("?" for _ in ranks)
            for rank, value in conn.execute(
                f"SELECT rn, v FROM (SELECT {column} AS v, row_number() OVER (ORDER BY {column}) AS rn "
                f"FROM requests WHERE started_at >= ? AND {column} IS NOT NULL) WHERE rn IN ({marks})",
                [since, *ranks.values()],
            ):
                values[rank] = value
        latency[column] = {f"p{p}": values.get(r) for p, r in ranks.items()}
    breakdowns: dict[str, list[dict[str, Any]]] = {}
    for dim, column in COUNT_DIMS.items():
        breakdowns[dim] = _rows(
            conn, f"SELECT CAST(coalesce({column}, '') AS TEXT) AS key, count(*) AS requests, "
                  f"coalesce(sum({_FAILED}), 0) AS failures, coalesce(sum(total_tokens), 0) AS total_tokens "
                  f"FROM requests WHERE started_at >= ? GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?",
            [since, 100 if dim in ("status", "outcome") else TOP_N])
    timeline = _empty_timeline(window, timeline_start, now)
    bucket = "CAST((started_at - :start) / :step AS INTEGER)"
    params = {"start": timeline_start, "step": window.step, "since": since}
    for row in conn.execute(f"SELECT {bucket} AS b, count(*), coalesce(sum({_FAILED}), 0) FROM requests "
                            "WHERE started_at >= :since GROUP BY b", params):
        if 0 <= row[0] < len(timeline):
            timeline[row[0]].update(requests=row[1], failures=row[2])
    for b, value in conn.execute(
        f"SELECT b, v FROM (SELECT {bucket} AS b, total_ms AS v, "
        "row_number() OVER (PARTITION BY {bucket} ORDER BY total_ms) AS rn, "
        "count(*) OVER (PARTITION BY {bucket}) AS c FROM requests "
        "WHERE started_at >= :since AND total_ms IS NOT NULL) WHERE rn = (c * 95 + 99) / 100".replace(
            "{bucket}", bucket), params):
        if 0 <= b < len(timeline):
            timeline[b]["p95_ms"] = value
    return {"totals": _totals(head), "latency": latency, "statuses": breakdowns.pop("status"),
            "outcomes": breakdowns.pop("outcome"), "top": breakdowns,
            "timeline": {"step": window.step, "buckets": timeline}}


def histogram_percentile(counts: list[tuple[float, float, int]], p: float) -> float | None:
    """p-th percentile from (lower_ms, upper_ms, n) buckets in ascending order, interpolated in its bucket."""
    total = sum(n for _, _, n in counts)
    if not total:
        return None
    rank, seen = nearest_rank(p, total), 0
    for lower, upper, n in counts:
        if n <= 0:
            continue
        if seen + n >= rank:
            if upper >= 1e12:  # the open-ended last bucket
                return lower
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    return None


def _rollup_aggregates(conn: sqlite3.Connection, window: Window, since: float, now: float,
                       timeline_start: float) -> dict[str, Any]:
    """One range scan of the rollup, grouped by (timeline bucket, dim, key); the rest is summed here."""
    first_minute = math.floor(since / 60) * 60
    bounds = {int(r[0]): (r[1], r[2]) for r in conn.execute("SELECT bucket, lower_ms, upper_ms FROM latency_buckets")}
    timeline = _empty_timeline(window, timeline_start, now)
    per_dim: dict[tuple[str, str], list[int]] = {}
    per_bucket_hist: dict[int, list[tuple[int, int]]] = {}
    sums = ", ".join(f"sum({c})" for c in TOKEN_COLUMNS)
    for b, dim, key, *values in conn.execute(
        f"SELECT (minute - ?) / ? AS b, dim, key, sum(requests), sum(failures), {sums} FROM {ROLLUP_TABLE} "
        "WHERE minute >= ? GROUP BY 1, 2, 3", [int(timeline_start), window.step, first_minute],
    ):
        if not values[0]:
            continue
        acc = per_dim.get((dim, key))
        if acc is None:
            per_dim[(dim, key)] = values
        else:
            for i, v in enumerate(values):
                acc[i] += v
        b = int(b)
        if 0 <= b < len(timeline):
            if dim == "all":
                timeline[b].update(requests=values[0], failures=values[1])
            elif dim == "total_ms":
                per_bucket_hist.setdefault(b, []).append((int(key), values[0]))
    for b, hist in per_bucket_hist.items():
        timeline[b]["p95_ms"] = histogram_percentile([(*bounds[k], n) for k, n in sorted(hist) if k in bounds], 95)

    def rows_of(dim: str) -> list[dict[str, Any]]:
        rows = [{"key": key, "requests": v[0], "failures": v[1], "total_tokens": v[-1]}
                for (d, key), v in per_dim.items() if d == dim]
        return sorted(rows, key=lambda r: (-r["requests"], r["key"]))

    everything = per_dim.get(("all", ""))
    head: dict[str, Any] = {}
    if everything:
        head = {"requests": everything[0], "failures": everything[1],
                **dict(zip(TOKEN_COLUMNS, everything[2:], strict=True))}
    head["successes"] = (per_dim.get(("outcome", "ok")) or [0])[0]
    latency: dict[str, dict[str, float | None]] = {}
    for column in LATENCY_COLUMNS:
        hist = sorted((int(r["key"]), r["requests"]) for r in rows_of(column))
        counts = [(*bounds[b], n) for b, n in hist if b in bounds]
        wanted = PERCENTILES if column == "total_ms" else (95,)
        latency[column] = {f"p{p}": histogram_percentile(counts, p) for p in wanted}
    top = {dim: rows_of(dim)[:TOP_N] for dim in TOP_DIMS}
    return {"totals": _totals(head), "latency": latency, "statuses": rows_of("status"),
            "outcomes": rows_of("outcome"), "top": top, "timeline": {"step": window.step, "buckets": timeline}}


def queue_stats(conn: sqlite3.Connection, since: float) -> dict[str, Any]:
    """Requests waiting for an account now (their `inflight` phase) and the waits of the window's queued requests.

    Read from `requests` directly (the rollup does not carry `queue_wait_ms`): only queued requests have a value,
    and the partial index `requests_queued` holds just those rows, so this stays small however big the table is.
    Percentiles are nearest-rank over the queued requests (a request that never waited is not a 0 in them)."""
    waiting = conn.execute("SELECT count(*) FROM inflight WHERE phase = 'queued'").fetchone()[0]
    has_column = any(r[1] == "queue_wait_ms" for r in conn.execute("PRAGMA table_info(requests)"))
    waits: list[float] = []
    if has_column:
        waits = [r[0] for r in conn.execute(
            "SELECT queue_wait_ms FROM requests WHERE started_at >= ? AND queue_wait_ms IS NOT NULL "
            "ORDER BY queue_wait_ms", [since])]
    n = len(waits)
    return {"waiting_now": waiting, "queued": n,
            **{f"p{p}": waits[nearest_rank(p, n) - 1] if n else None for p in (50, 95)}}


ATTEMPT_ROW_LIMIT = 25_000
"""The attempt breakdown reads at most this many of the window's latest `attempts` rows (about 25 ms)."""


def attempt_failures(conn: sqlite3.Connection, since: float, labels: dict[str, str], *,
                     row_limit: int = ATTEMPT_ROW_LIMIT) -> dict[str, Any]:
    """What failover absorbed: the window's failed upstream attempts by class, and how many of them sit in
    requests that ended `ok` (the client never saw them).

    One backwards range scan of the `attempts.started_at` index, bounded by `row_limit` (the rollup holds no
    attempts, and a day of a busy pool has millions): up to the limit the figures are exact for the window,
    above it they cover its latest `row_limit` attempts and `since` says from when. Only the failed
    attempts and the second attempts (one per request that needed more than one) are looked up in
    `requests`, by primary key. `retried_requests` counts second attempts, so a retry after a token
    refresh counts too."""
    latest = ("SELECT request_id, n, account_id, class, started_at FROM attempts WHERE started_at >= ? "
              "ORDER BY started_at DESC LIMIT ?")
    ended_ok = "(SELECT r.outcome = 'ok' FROM requests r WHERE r.id = a.request_id)"
    failed = "(a.class IS NOT NULL AND a.class != 'ok')"
    rows = _rows(conn, f"SELECT a.class AS class, count(*) AS attempts, min(a.started_at) AS first, "
                       f"coalesce(sum(a.n = 2), 0) AS retried, "
                       f"coalesce(sum(CASE WHEN a.n = 2 THEN {ended_ok} END), 0) AS retried_ok, "
                       f"coalesce(sum(CASE WHEN {failed} THEN {ended_ok} END), 0) AS absorbed, "
                       f"group_concat(DISTINCT CASE WHEN {failed} THEN a.account_id END) AS accounts "
                       f"FROM ({latest}) AS a GROUP BY a.class", [since, row_limit])
    scanned = sum(r["attempts"] for r in rows)
    by_class = []
    for row in rows:
        if row["class"] not in (None, "ok"):
            ids = [i for i in (row["accounts"] or "").split(",") if i]
            by_class.append({"class": row["class"], "attempts": row["attempts"], "absorbed": row["absorbed"],
                             "accounts": sorted(labels.get(i, i) for i in ids)})
    by_class.sort(key=lambda r: (-r["attempts"], r["class"]))
    complete = scanned < row_limit
    return {"scanned": scanned, "complete": complete,
            "since": since if complete else min(r["first"] for r in rows),
            "failed": sum(r["attempts"] for r in by_class), "absorbed": sum(r["absorbed"] for r in by_class),
            "accounts": len({a for r in by_class for a in r["accounts"]}),
            "retried_requests": sum(r["retried"] for r in rows), "retried_ok": sum(r["retried_ok"] for r in rows),
            "by_class": by_class}


# ---------------------------------------------------------------- lists

_REQUEST_COLUMNS = ("id, started_at, finished_at, client_key_label, method, endpoint, model, stream, account_id, "
                    "attempts, status, outcome, failure_brief, total_ms, first_chunk_ms, total_tokens")


def _label(rows: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    for row in rows:
        account_id = row.get("account_id")
        row["account_label"] = labels.get(account_id, account_id) if account_id else None
    return rows


def recent_requests(conn: sqlite3.Connection, labels: dict[str, str], limit: int = LIST_N) -> list[dict[str, Any]]:
    return _label(_rows(conn, f"SELECT {_REQUEST_COLUMNS} FROM requests ORDER BY started_at DESC LIMIT ?",
                        [limit]), labels)


def recent_failures(conn: sqlite3.Connection, since: float, labels: dict[str, str],
                    limit: int = LIST_N) -> list[dict[str, Any]]:
    """One index range scan per failure class (index outcome, started_at), merged: never a table scan."""
    parts = [f"SELECT * FROM (SELECT {_REQUEST_COLUMNS} FROM requests WHERE outcome = ? AND started_at >= ? "
             "ORDER BY started_at DESC LIMIT ?)" for _ in FAILURE_OUTCOMES]
    params: list[Any] = []
    for outcome in FAILURE_OUTCOMES:
        params += [outcome, since, limit]
    sql = f"SELECT * FROM ({' UNION ALL '.join(parts)}) ORDER BY started_at DESC LIMIT ?"
    return _label(_rows(conn, sql, [*params, limit]), labels)


def inflight(conn: sqlite3.Connection, labels: dict[str, str], limit: int = 50) -> list[dict[str, Any]]:
    return _label(_rows(conn, "SELECT request_id, started_at, updated_at, pid, client_key_label, method, endpoint, "
                              "model, stream, account_id, attempts, phase FROM inflight "
                              "ORDER BY started_at LIMIT ?", [limit]), labels)


def _decode(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def audit_entries(conn: sqlite3.Connection, labels: dict[str, str], limit: int = 15) -> list[dict[str, Any]]:
    rows = _rows(conn, "SELECT id, at, actor, action, target, before, after FROM audit_log "
                       "ORDER BY at DESC, id DESC LIMIT ?", [limit])
    for row in rows:
        row["target_label"] = labels.get(row["target"], row["target"])
        row["before"], row["after"] = _decode(row["before"]), _decode(row["after"])
    return rows


# ---------------------------------------------------------------- accounts page


def accounts_page(conn: sqlite3.Connection, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    db = sqlite_utils.Database(conn)
    accounts = store.list_accounts(db)
    health = store.load_health(db, now)
    since = now - 86_400
    if has_rollup(conn):
        stats = {r["key"]: r for r in _rows(
            conn, f"SELECT key, sum(requests) AS requests, sum(failures) AS failures FROM {ROLLUP_TABLE} "
                  "WHERE dim = 'account' AND minute >= ? GROUP BY key", [math.floor(since / 60) * 60])}
    else:
        stats = {r["key"]: r for r in _rows(
            conn, f"SELECT account_id AS key, count(*) AS requests, coalesce(sum({_FAILED}), 0) AS failures "
                  "FROM requests WHERE started_at >= ? GROUP BY account_id", [since])}
    rows = []
    for account in accounts:
        h = health.get(account.id)
        last_used = h.last_used_at if h else None
        if last_used is None:
            last_used = conn.execute("SELECT max(started_at) FROM requests WHERE account_id = ?",
                                     [account.id]).fetchone()[0]
        s = stats.get(account.id) or {}
        rows.append({"account": account, "health": h, "last_used_at": last_used,
                     "requests_24h": s.get("requests") or 0, "failures_24h": s.get("failures") or 0,
                     "cooling": bool(h and h.cooldown_until and h.cooldown_until > now),
                     "recovery": recovery.state_of(h, now).value,
                     "model_cooldowns": sorted((h.model_cooldowns if h else {}).items())})
    return {"now": now, "rows": rows}


def load_settings(conn: sqlite3.Connection) -> Any:
    return store.load_settings(sqlite_utils.Database(conn))
