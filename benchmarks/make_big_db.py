"""Fill a pool database with N synthetic `requests` rows spread over the last 24 hours.

    .venv/bin/python benchmarks/make_big_db.py data/big.db            # 1 000 000 rows
    .venv/bin/python benchmarks/make_big_db.py data/big.db -n 200000

For the dashboard's "overview < 300 ms over 1 M rows" target (issue 6). The database is created
through `accountpool.storage.schema.connect`, so the rollup triggers run for every row as they would for
the proxy's metrics writer: the run time also shows what the triggers cost per row.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from accountpool.models import Account, AccountKind
from accountpool.storage import schema, store

MODELS = ["gpt-5.5", "gpt-5.5-mini", "gpt-5-codex", "gpt-4.1"]
ENDPOINTS = ["/v1/responses", "/v1/chat/completions", "/backend-api/codex/responses"]
CLIENTS = ["laptop", "ci", "codex-cli", "notebook"]
FAILURES = [(429, "rate_limited", "Rate limit reached"), (402, "quota_exceeded", "quota exceeded"),
            (502, "upstream_error", "upstream 502"), (400, "invalid_request", "bad request"),
            (429, "pool_exhausted", "3 rate_limited")]
COLUMNS = ("id", "started_at", "finished_at", "client_key_label", "method", "endpoint", "model", "stream",
           "request_bytes", "account_id", "attempts", "status", "outcome", "failure_brief", "total_ms",
           "upstream_headers_ms", "first_chunk_ms", "stream_ms", "input_tokens", "cached_input_tokens",
           "output_tokens", "reasoning_tokens", "total_tokens", "session_key")


def ensure_accounts(db, count: int = 6) -> list[str]:
    existing = [a.id for a in store.list_accounts(db)]
    for i in range(len(existing), count):
        kind = AccountKind.CHATGPT if i % 2 else AccountKind.API_KEY
        acc = Account(id=f"acc_bench{i}", label=f"bench-{i}", kind=kind, plan="pro" if i % 3 else "free")
        store.insert_account(db, acc)
        existing.append(acc.id)
    return existing


def synthetic_rows(n: int, account_ids: list[str], now: float, seed: int = 1):
    rng = random.Random(seed)
    start = now - 86_400
    step = 86_400 / n
    for i in range(n):
        started = start + i * step + rng.random() * step
        stream = rng.random() < 0.6
        headers = rng.lognormvariate(5.5, 0.6)
        if rng.random() < 0.05:
            status, outcome, brief = rng.choice(FAILURES)
            first = stream_ms = None
            total = headers + rng.random() * 20
            tokens = (None,) * 5
        else:
            status, outcome, brief = 200, "ok", None
            first = headers + rng.lognormvariate(3, 0.5)
            stream_ms = rng.lognormvariate(7.5, 0.8) if stream else None
            total = first + (stream_ms or rng.lognormvariate(4, 0.5))
            inp = rng.randint(200, 60_000)
            cached = int(inp * rng.random() * 0.9)
            out = rng.randint(10, 4_000)
            reasoning = int(out * rng.random() * 0.5)
            tokens = (inp, cached, out, reasoning, inp + out)
        yield (f"r{i:08d}", started, started + total / 1000, rng.choice(CLIENTS), "POST", rng.choice(ENDPOINTS),
               rng.choice(MODELS), int(stream), rng.randint(300, 90_000), rng.choice(account_ids),
               1 if outcome == "ok" else 2, status, outcome, brief, total, headers, first, stream_ms, *tokens,
               f"s{rng.randint(0, 5_000):05d}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("-n", "--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=20_000)
    args = parser.parse_args(argv)
    db = schema.connect(args.db)
    account_ids = ensure_accounts(db)
    sql = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
    t0 = time.perf_counter()
    rows = synthetic_rows(args.rows, account_ids, time.time())
    done = 0
    while True:
        batch = [row for _, row in zip(range(args.batch), rows, strict=False)]
        if not batch:
            break
        with db.conn:
            db.conn.execute("BEGIN")
            db.conn.executemany(sql, batch)
        done += len(batch)
        print(f"\r{done:,} rows", end="", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t0
    print(f"\n{done:,} rows in {elapsed:.1f} s ({elapsed / max(done, 1) * 1e6:.1f} µs/row incl. rollup triggers)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
