"""Capture the kbuild logs of tests/golden/kbuild/ from real cold builds.

Each log is what ``make`` printed while the harness built a guest kernel
from nothing: ``iommufd-harness build`` in an empty work dir (Debian's 6.12
source, the default series, the profile's config) into an empty build
directory.  A warm ccache only makes that faster: kbuild prints the same
steps.  The live-progress tests count them.

    .venv/bin/python tests/golden/capture_kbuild.py [--profile x86_64-vtd] [--debug lockdep,kasan]

A capture replaces its golden file only if the build succeeded and printed
the final link of vmlinux.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "kbuild"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="x86_64-vtd")
    ap.add_argument("--debug", default="")
    args = ap.parse_args()
    name = args.profile + ("+" + "+".join(sorted(args.debug.split(","))) if args.debug else "") + "-cold.log"
    with tempfile.TemporaryDirectory(prefix="iommufd-harness-kbuild-") as tmp:
        argv = [sys.executable, "-m", "harness", "build", "--work", tmp, "--profile", args.profile]
        if args.debug:
            argv += ["--debug", args.debug]
        res = subprocess.run(argv, cwd=REPO)
        log = Path(tmp) / "logs" / "build.log"
        if res.returncode != 0 or not log.is_file():
            print(f"the build failed (exit {res.returncode}); nothing captured", file=sys.stderr)
            return 1
        text = log.read_text(errors="replace")
        if "  LD      vmlinux" not in text:
            print(f"{log} does not show the link of vmlinux; nothing captured", file=sys.stderr)
            return 1
        GOLDEN.mkdir(parents=True, exist_ok=True)
        (GOLDEN / name).write_text(text)
        print(f"captured {GOLDEN / name} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
