"""Capture the golden results.json files of tests/golden/ from real runs.

The tests of what reads many results dirs back (report --merge,
report.html, the nightly history, the terminal summary, the gate's reply,
baselines) start from these: each is the results.json of a real
``iommufd-harness run`` on a kernel built here and booted under QEMU.

    results-x86_64-vtd-full-pass.json            the full suite, the default series: pass
    results-x86_64-vtd-full-fail.json            the same with the fixture
                                                 auto-iova-loses-alignment.patch: fail
                                                 (area_auto_iova, on the four iommufd_ioas variants)
    results-arm64-smmuv3-access-build-error.json arm64, the access suite, with the fixture
                                                 selftests-include-a-kernel-header.patch:
                                                 no verdict (the selftests do not build)

    .venv/bin/python tests/golden/capture_results.py [--work DIR] [NAME ...]

NAME is pass, fail or build-error (default: all three).  Each capture
checks what the tests rely on (verdict, counts, failing tests, the error)
and validates the file against results.schema.json before it replaces
the golden file, so a capture never silently keeps a run that does not
show it.  The files are kept as the harness wrote them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
FIXTURES = REPO / "tests" / "fixtures" / "kernel-patches"
AUTO_IOVA = [f"iommufd_ioas.{v}.area_auto_iova" for v in ("no_domain", "mock_domain", "two_mock_domain",
                                                          "mock_domain_limit")]


def _pass(d: dict) -> str | None:
    if d["verdict"] != "pass" or d["counts"]["pass"] != 190 or len(d["tests"]) != 190:
        return f"verdict {d['verdict']}, counts {d['counts']}"
    return None


def _fail(d: dict) -> str | None:
    failed = sorted(t["name"] for t in d["tests"] if t["status"] != "pass")
    if d["verdict"] != "fail" or failed != sorted(AUTO_IOVA) or d["counts"]["pass"] != 186:
        return f"verdict {d['verdict']}, not passing: {failed}"
    if not all("area_auto_iova:Expected 0" in t["log"] for t in d["tests"] if t["status"] == "fail"):
        return "a failing test's log does not show its failed expectation"
    return None


def _build_error(d: dict) -> str | None:
    if d["verdict"] != "error" or d["tests"] or not d["errors"] \
            or "error [build]: iommufd selftests build failed" not in d["errors"][0] \
            or "linux/align.h" not in d["errors"][0]:
        return f"verdict {d['verdict']}, errors {d['errors'][:1]}"
    return None


CAPTURES = {
    "pass": ("results-x86_64-vtd-full-pass.json", ["--profile", "x86_64-vtd", "--suite", "full"], _pass),
    "fail": ("results-x86_64-vtd-full-fail.json",
             ["--profile", "x86_64-vtd", "--suite", "full", "--patches", FIXTURES / "auto-iova-loses-alignment.patch"],
             _fail),
    "build-error": ("results-arm64-smmuv3-access-build-error.json",
                    ["--profile", "arm64-smmuv3", "--suite", "access",
                     "--patches", FIXTURES / "selftests-include-a-kernel-header.patch"], _build_error),
}


def capture(name: str, work: Path, tmp: Path) -> bool:
    from harness.reports.results import validate

    golden, args, check = CAPTURES[name]
    results = tmp / name
    argv = [sys.executable, "-m", "harness", "run", "--quiet", "--work", str(work), "--results", str(results),
            *map(str, args)]
    print(f"{name}: {' '.join(argv[2:])}", flush=True)
    res = subprocess.run(argv, cwd=REPO)
    try:
        data = json.loads((results / "results.json").read_text())
    except (OSError, ValueError) as e:
        print(f"{name}: no results.json (exit {res.returncode}): {e}; nothing captured", file=sys.stderr)
        return False
    wrong = check(data) or "; ".join(validate(data))
    if wrong:
        print(f"{name}: not what {golden} must show: {wrong}; nothing captured (see {results})", file=sys.stderr)
        return False
    (GOLDEN / golden).write_text(json.dumps(data, indent=2) + "\n")
    print(f"{name}: {GOLDEN / golden}")
    return True


def main() -> int:
    sys.path.insert(0, str(REPO))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "work")
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(CAPTURES)} (default: all)")
    args = ap.parse_args()
    unknown = sorted(set(args.names) - set(CAPTURES))
    if unknown:
        ap.error(f"no capture {', '.join(unknown)}: the captures are {', '.join(CAPTURES)}")
    tmp = Path(tempfile.mkdtemp(prefix="iommufd-golden-results-"))
    ok = [capture(n, args.work.expanduser().resolve(), tmp) for n in (args.names or CAPTURES)]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
