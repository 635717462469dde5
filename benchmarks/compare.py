"""Closed-loop CPU per request of bare mitmdump, the addon at an earlier commit, and the addon now.

    .venv/bin/python benchmarks/compare.py --before <git rev> [--rounds 6] [--seconds 3]

The three run side by side and take turns cell by cell (bare, before, after for each scenario and
round), so a machine that gets busier or quieter affects all three alike; the figures are medians
over the rounds. "before" is a detached `git worktree` of the given revision under `out/`, loaded
through PYTHONPATH so its own `accountpool` package is the one mitmdump imports. CPU is utime +
stime of each mitmdump (all threads) from `/proc`, divided by the requests it answered; the main
thread's share (mitmproxy's event loop, where the hooks and the relay run) is shown apart from the
other threads' (the metrics writer). Each addon has a pool of its own: two writers sharing one
`pool.db` would make each reload its pool view on the other's commits.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accountpool.proxy.gc_tuning import DEFAULT_YOUNG_THRESHOLD
from common import (
    ROOT,
    cpu_seconds,
    machine,
    main_thread_cpu_seconds,
    make_pool,
    run_loadgen,
    scratch_dir,
    simulator,
    start_addon,
    start_bare,
    start_floor,
)


def worktree(rev: str, out: Path) -> Path:
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    path = out / f"rev-{sha}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), sha], check=True,
                       capture_output=True)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="git revision to compare against (e.g. a commit id)")
    p.add_argument("--floor", action="store_true",
                   help="also run floor_addon.py: the design's floor, without the product's work")
    p.add_argument("--bare-gc", action="store_true",
                   help="also bare mitmdump with the addon's young GC threshold (and accept queue): what that "
                        "process setting is worth without the addon")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--scenarios", default="json:8,json:64,sse:8,sse:64",
                   help="kind:concurrency[:deltas]; deltas > 0 makes each stream that many tokens, 1 ms apart "
                        "(per-token cost)")
    args = p.parse_args()
    scenarios = [(k, int(c), int(d[0]) if d else 0) for k, c, *d in (s.split(":") for s in args.scenarios.split(","))]
    info = machine()
    work = scratch_dir("compare-")
    before_src = worktree(args.before, work.parent) / "addon"
    print(f"machine: {info['nproc']} cores, {info['cpu']}, load average {info['loadavg_at_start']}; "
          f"before = {args.before} ({before_src.parent.name})", flush=True)
    cells: dict[tuple[str, int, int, str], list[tuple[float, float, float]]] = {}
    with simulator(work) as sim:
        pools = {}
        for name in ("before", "after"):
            (work / name).mkdir()
            pools[name] = make_pool(work / name, sim.url)
        targets = [start_bare(work, sim.url),
                   start_addon(work, sim.url, pools["before"], source=before_src, name="before"),
                   start_addon(work, sim.url, pools["after"], name="after"),
                   *([start_floor(work, sim.url)] if args.floor else []),
                   *([start_bare(work, sim.url, gc_threshold=DEFAULT_YOUNG_THRESHOLD)] if args.bare_gc else [])]
        try:
            for rnd in range(args.rounds):
                for kind, conc, deltas in scenarios:
                    tokens = {"x-sim-deltas": str(deltas), "x-sim-delta-delay-ms": "1"} if deltas else None
                    for px in targets:
                        cpu0, main0 = cpu_seconds(px.proc.pid), main_thread_cpu_seconds(px.proc.pid)
                        res = run_loadgen(px.port, px.auth, kind=kind, concurrency=conc, duration=args.seconds,
                                          warmup=0.5, extra_headers=tokens)
                        cpu = cpu_seconds(px.proc.pid) - cpu0
                        main = main_thread_cpu_seconds(px.proc.pid) - main0
                        total = max(1, res["total_sent"])
                        cells.setdefault((kind, conc, deltas, px.name), []).append(
                            (res["rps"], 1000 * cpu / total, 1000 * main / total))
                print(f"round {rnd + 1}/{args.rounds} done", flush=True)
        finally:
            for px in targets:
                px.proc.stop()
    floor = " floor CPU ms/req | floor ÷ bare | after ÷ floor |" if args.floor else ""
    tuned = " bare+gc CPU ms/req | after ÷ bare+gc CPU, req/s |" if args.bare_gc else ""
    print("\n| scenario | bare CPU ms/req | before | after | after: main thread + others | "
          f"CPU ÷ bare before → after | req/s ÷ bare before → after |{floor}{tuned}")
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if args.floor else "")
          + ("---:|---:|" if args.bare_gc else ""))
    names = ("bare", "before", "after", *(("floor",) if args.floor else ()),
             *(("bare+backlog+gc",) if args.bare_gc else ()))
    for kind, conc, deltas in scenarios:
        med = {name: [statistics.median(cell[i] for cell in cells[(kind, conc, deltas, name)]) for i in range(3)]
               for name in names}
        (brps, bcpu, _), (xrps, xcpu, _), (arps, acpu, amain) = med["bare"], med["before"], med["after"]
        label = f"{kind} c={conc}" + (f", {deltas} tokens" if deltas else "")
        row = (f"| {label} | {bcpu:.2f} | {xcpu:.2f} | {acpu:.2f} | {amain:.2f} + {acpu - amain:.2f} | "
               f"{xcpu / bcpu:.2f} → {acpu / bcpu:.2f} | {xrps / brps:.2f} → {arps / brps:.2f} |")
        if args.floor:
            fcpu = med["floor"][1]
            row += f" {fcpu:.2f} | {fcpu / bcpu:.2f} | {acpu / fcpu:.2f} |"
        if args.bare_gc:
            grps, gcpu, _ = med["bare+backlog+gc"]
            row += f" {gcpu:.2f} | {acpu / gcpu:.2f}, {arps / grps:.2f} |"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
