"""``make bench``: time the default job cold (empty work dir) and warm (again,
nothing changed), and print the per-stage figures against the budgets.

    python -m harness.bench [--work DIR] [--warm-only] [harness run args...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness import proc

BUDGETS = {"cold": 20 * 60, "warm": 60}


def timed_run(work: Path, extra: list[str], cold: bool) -> tuple[float, dict, int]:
    results = Path(tempfile.mkdtemp(prefix="iommufd-bench-")) / "results"
    # a cold run must not be helped by objects ccache kept from earlier builds
    env = {"CCACHE_DISABLE": "1"} if cold else None
    t0 = time.monotonic()
    code = proc.run_foreground([sys.executable, "-m", "harness", "run", "--quiet", "--work", work,
                                "--results", results, *extra], env=env)
    elapsed = time.monotonic() - t0
    try:
        data = json.loads((results / "results.json").read_text())
    except (OSError, ValueError):
        data = {}
    return elapsed, data, code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, help="work dir (default: a new temporary one, i.e. a cold run)")
    ap.add_argument("--warm-only", action="store_true", help="skip the cold run (needs --work with a build)")
    args, extra = ap.parse_known_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="iommufd-bench-work-"))
    rows = []
    try:
        for kind in (["warm"] if args.warm_only else ["cold", "warm"]):
            elapsed, data, code = timed_run(work, extra, cold=kind == "cold")
            stages = data.get("stages", {})
            rows.append((kind, elapsed, code, data.get("verdict", "?"), stages))
            ok = "ok" if elapsed <= BUDGETS[kind] else "OVER BUDGET"
            print(f"{kind:5} {elapsed:7.1f} s (budget {BUDGETS[kind]} s: {ok})  exit {code}  verdict "
                  f"{data.get('verdict', '?')}  stages: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()),
                  flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(e <= BUDGETS[k] for k, e, *_ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
