"""Make `docs/overview.png`, the README's picture of the dashboard overview over demo traffic.

The pieces are the demo's (`accountpool.admin.demo`: the demo pool with its scripted faults, its traffic mix)
and the test harness's (`tests/harness.py`: simulator, mitmdump, Datasette, headless Debian Chromium).
Everything stays on 127.0.0.1; the pool lives in a temp dir and is deleted afterwards.

    .venv/bin/python scripts/screenshot_dashboard.py [--seconds 150] [--out docs/overview.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from accountpool.admin.demo import build_demo_pool, start_traffic  # noqa: E402
from harness import LAPTOP, Datasette, Mitmdump, Pool, launch_chromium, running_sim, signed_in_page  # noqa: E402

MAX_BYTES = 200_000
MAX_HEIGHT = 1400


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150, help="demo traffic before the picture (default 150)")
    parser.add_argument("--window", default="10m", choices=("10m", "1h", "24h"), help="overview window")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "overview.png")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="accountpool-shot-") as tmp:
        for sim in running_sim():
            pool = Pool(Path(tmp), sim)
            pool.client_key = build_demo_pool(pool.db_path, sim)  # replaces the harness's empty pool
            sweep = {"pool_usage_url": f"{sim.url}/backend-api/wham/usage", "pool_usage_sweep": 30}
            with Mitmdump(pool, options=sweep) as proxy, Datasette(pool) as ds:
                stop = threading.Event()
                workers, counts = start_traffic(proxy.url, pool.client_key, sim, stop)
                print(f"sending demo traffic for {args.seconds:.0f} s ...", flush=True)
                time.sleep(args.seconds)
                stop.set()
                for w in workers:
                    w.join()
                time.sleep(1)  # the metrics writer flushes every 100 ms here
                with sync_playwright() as playwright:
                    browser = launch_chromium(playwright)
                    try:
                        page = signed_in_page(browser, ds, LAPTOP)
                        page.goto(f"{ds.url}/-/pool?window={args.window}")
                        page.wait_for_selector("#pool-live svg.ap-chart")
                        height = min(MAX_HEIGHT, page.evaluate("document.documentElement.scrollHeight"))
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        while True:
                            clip = {"x": 0, "y": 0, "width": LAPTOP["width"], "height": height}
                            page.screenshot(path=str(args.out), clip=clip, full_page=True)
                            if args.out.stat().st_size <= MAX_BYTES or height <= 600:
                                break
                            height -= 100
                    finally:
                        browser.close()
    print(f"{args.out}: {LAPTOP['width']}x{height}, {args.out.stat().st_size // 1024} KB "
          f"({counts['ok']} answered, {counts['failed']} failed, {counts['refused']} stale-key requests refused)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
