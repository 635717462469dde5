"""Bare mitmdump vs mitmdump + accountpool, side by side, in one run (issue 6).

    .venv/bin/python benchmarks/run.py                 # or: make bench
    .venv/bin/python benchmarks/run.py --duration 3 --rounds 1 --concurrency 8    # quick look

Starts the simulated upstream (`python -m accountpool.simulator`, its own process), a pool with
two healthy API-key accounts and a client key (db under benchmarks/out/), a bare
`mitmdump --mode reverse:<sim>` and `mitmdump -s <addon>` on the same upstream, then drives the
same closed-loop load (`loadgen.py`, its own process) against each, alternating per scenario
(bare, addon, bare, addon…) so a noisy neighbour hurts both alike: JSON and SSE `POST
/v1/responses` at concurrency 1, 8 and 64, and `sse100`: streams of 100 tokens 1 ms apart, an
agent's answer in miniature, where the cost per token outweighs the cost per request. Prints
requests/s, p50, p95, time to first body byte, mitmdump CPU per request, and the ratios addon ÷
bare; writes everything as JSON to benchmarks/out/. A LiteLLM proxy column is added when
`litellm` is importable (not a dependency).

These are figures, not tests: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BARE_KEY,
    OUT,
    Proc,
    Proxy,
    cpu_seconds,
    free_port,
    machine,
    make_pool,
    run_loadgen,
    scratch_dir,
    simulator,
    start_addon,
    start_bare,
    wait_for_port,
)

TARGET_RPS_RATIO = 0.95
TARGET_CPU_RATIO = 1.05
"""Issue 14: at concurrency 8 and 64, addon >= 0.95 of bare's req/s and <= 1.05x its CPU per request."""
TARGET_P50_EXTRA_MS = 1.0
TARGET_TTFB_EXTRA_MS = 1.0


def start_litellm(workdir: Path, sim_url: str) -> Proxy | None:
    """LiteLLM's proxy on the same upstream, only when it is installed (never installed by us)."""
    if importlib.util.find_spec("litellm") is None:
        return None
    exe = shutil.which("litellm") or str(Path(sys.executable).parent / "litellm")
    port = free_port()
    cfg = workdir / "litellm.yaml"
    cfg.write_text(json.dumps({"model_list": [{"model_name": "gpt-5.5", "litellm_params": {
        "model": "openai/gpt-5.5", "api_base": f"{sim_url}/v1", "api_key": BARE_KEY}}]}))
    log = workdir / f"litellm-{port}.log"
    proc = Proc([exe, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"], log)
    try:
        wait_for_port(port, proc.proc, timeout=90, log=log)
    except (RuntimeError, TimeoutError) as exc:
        print(f"litellm: could not start ({exc}); column omitted", file=sys.stderr)
        proc.stop()
        return None
    return Proxy("litellm", proc, port, "Bearer sk-bench-litellm")


def merge(results: list[dict]) -> dict:
    """Rounds of one target and scenario → one figure (requests summed, percentiles over all samples)."""
    lat = sorted(x for r in results for x in r["latencies_ms"])
    ttfb = sorted(x for r in results for x in r["ttfbs_ms"])

    def pct(values: list[float], p: float) -> float | None:
        return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))] if values else None

    requests = sum(r["requests"] for r in results)
    seconds = sum(r["duration_s"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    sent = sum(r["total_sent"] for r in results)
    return {"rps": requests / seconds if seconds else 0.0, "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
            "ttfb_p50_ms": pct(ttfb, 50), "ttfb_p95_ms": pct(ttfb, 95), "requests": requests,
            "non200": sum(r["non200"] for r in results),
            "errors": sum(sum(r["errors"].values()) for r in results),
            "cpu_ms_per_req": cpu / sent * 1000 if sent else None}


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(summary: dict, targets: list[str]) -> str:
    head = ["scenario", "proxy", "req/s", "p50 ms", "p95 ms", "TTFB p50", "TTFB p95", "CPU ms/req", "non-200"]
    rows = [head]
    for scen, by_target in summary.items():
        for t in targets:
            if t not in by_target:
                continue
            m = by_target[t]
            rows.append([scen, t, fmt(m["rps"]), fmt(m["p50_ms"], 2), fmt(m["p95_ms"], 2),
                         fmt(m["ttfb_p50_ms"], 2) if scen.startswith("sse") else "",
                         fmt(m["ttfb_p95_ms"], 2) if scen.startswith("sse") else "",
                         fmt(m["cpu_ms_per_req"], 2), str(m["non200"] + m["errors"])])
        for t in targets:
            if t == "bare" or t not in by_target:
                continue
            b, m = by_target["bare"], by_target[t]
            rows.append([scen, f"{t}÷bare", fmt(m["rps"] / b["rps"] if b["rps"] else None, 2),
                         f"+{fmt(m['p50_ms'] - b['p50_ms'], 2)}", f"+{fmt(m['p95_ms'] - b['p95_ms'], 2)}",
                         f"+{fmt(m['ttfb_p50_ms'] - b['ttfb_p50_ms'], 2)}" if scen.startswith("sse") else "",
                         f"+{fmt(m['ttfb_p95_ms'] - b['ttfb_p95_ms'], 2)}" if scen.startswith("sse") else "",
                         fmt(m["cpu_ms_per_req"] / b["cpu_ms_per_req"], 2) if b["cpu_ms_per_req"] else "-", ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


LONG_STREAM = {"x-sim-deltas": "100", "x-sim-delta-delay-ms": "1"}
"""The `sse100` scenario: the simulator streams 100 text deltas 1 ms apart."""


def verdicts(summary: dict) -> list[str]:
    out = []
    for scen, by in summary.items():
        b, a = by["bare"], by["addon"]
        ratio = a["rps"] / b["rps"] if b["rps"] else 0.0
        out.append(f"{scen}: req/s ratio {ratio:.2f} (target >= {TARGET_RPS_RATIO}) "
                   f"{'met' if ratio >= TARGET_RPS_RATIO else 'MISSED'}")
        if b["cpu_ms_per_req"] and a["cpu_ms_per_req"]:
            cpu = a["cpu_ms_per_req"] / b["cpu_ms_per_req"]
            out.append(f"{scen}: CPU per request {cpu:.2f}x bare (target <= {TARGET_CPU_RATIO}x) "
                       f"{'met' if cpu <= TARGET_CPU_RATIO else 'MISSED'}")
        extra = a["p50_ms"] - b["p50_ms"]
        if not scen.startswith("sse100"):  # a 100-token stream's duration is the upstream's pace
                out.append(f"{scen}: p50 bare+{extra:.2f} ms (target <= +{TARGET_P50_EXTRA_MS}) "
                       f"{'met' if extra <= TARGET_P50_EXTRA_MS else 'MISSED'}")
        if scen.startswith("sse"):
            extra = a["ttfb_p50_ms"] - b["ttfb_p50_ms"]
            out.append(f"{scen}: TTFB p50 bare+{extra:.2f} ms (target <= +{TARGET_TTFB_EXTRA_MS}) "
                       f"{'met' if extra <= TARGET_TTFB_EXTRA_MS else 'MISSED'}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    p.add_argument("--rounds", type=int, default=2, help="alternations per scenario (default 2)")
    p.add_argument("--concurrency", default="1,8,64",
                   help="closed-loop clients per run; 1 shows the latency one request adds without queueing")
    p.add_argument("--kinds", default="json,sse,sse100")
    p.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM column even if installed")
    args = p.parse_args(argv)
    if not 1 <= args.rounds <= 10 or not 0.5 <= args.duration <= 120:
        p.error("--rounds 1..10 and --duration 0.5..120 keep a run bounded")
    conc = [int(c) for c in args.concurrency.split(",") if c]
    kinds = [k for k in args.kinds.split(",") if k]
    work = scratch_dir("run-")
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}, mitmproxy {info['mitmproxy']}, "
          f"load average at start {info['loadavg_at_start']}")
    print(f"scratch: {work}")
    raw: dict[str, dict[str, list[dict]]] = {}
    with simulator(work) as sim, contextlib.ExitStack() as stack:
        pool = make_pool(work, sim.url)
        proxies = [start_bare(work, sim.url), start_addon(work, sim.url, pool)]
        litellm = None if args.no_litellm else start_litellm(work, sim.url)
        if litellm is None and not args.no_litellm:
            print("litellm: not importable, LiteLLM column omitted")
        proxies += [litellm] if litellm else []
        for proxy in proxies:
            stack.callback(proxy.proc.stop)
        t_start = time.monotonic()
        for kind in kinds:
            for c in conc:
                scen = f"{kind} c={c}"
                raw[scen] = {px.name: [] for px in proxies}
                for rnd in range(args.rounds):
                    for px in proxies:
                        cpu0 = cpu_seconds(px.pid)
                        r = run_loadgen(px.port, px.auth, kind=kind.removesuffix("100"), concurrency=c,
                                        duration=args.duration, warmup=args.warmup, raw=True,
                                        extra_headers=LONG_STREAM if kind == "sse100" else None)
                        r["cpu_s"] = cpu_seconds(px.pid) - cpu0
                        raw[scen][px.name].append(r)
                        print(f"  {scen:10s} round {rnd + 1} {px.name:7s} {r['rps']:8.1f} req/s  "
                              f"p50 {fmt(r['p50_ms'], 2):>7s} ms  non-200 {r['non200']}  errors {r['errors'] or 0}",
                              flush=True)
        elapsed = time.monotonic() - t_start
    summary = {scen: {t: merge(rs) for t, rs in by.items()} for scen, by in raw.items()}
    targets = [px.name for px in proxies]
    print()
    print(table(summary, targets))
    print()
    print("\n".join(verdicts(summary)))
    print("\nTTFB = time to the first body byte. CPU ms/req = mitmdump's user+system CPU per request "
          "(all threads), the figure least disturbed by other load on the machine.")
    OUT.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = OUT / f"results-{stamp}.json"
    for by in raw.values():
        for rs in by.values():
            for r in rs:
                r.pop("latencies_ms", None)
                r.pop("ttfbs_ms", None)
    out.write_text(json.dumps({"machine": info, "args": vars(args), "elapsed_s": round(elapsed, 1),
                               "summary": summary, "runs": raw}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
