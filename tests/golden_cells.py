"""Results dirs made of real runs' results.json (tests/golden, captured by
tests/golden/capture_results.py and validated against results.schema.json
there), for the tests of what reads many of them back: report --merge,
report.html, the nightly history."""

from __future__ import annotations

import json
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"
PASS = "results-x86_64-vtd-full-pass.json"
FAIL = "results-x86_64-vtd-full-fail.json"
BUILD_ERROR = "results-arm64-smmuv3-access-build-error.json"


def cell(root: Path, name: str, golden: str, **changes) -> Path:
    """``root/name/results.json``: the golden run ``golden``, with ``changes``
    to its top-level fields (another profile, another start time)."""
    d = root / name
    d.mkdir(parents=True)
    data = json.loads((GOLDEN / golden).read_text())
    data.update(changes)
    (d / "results.json").write_text(json.dumps(data))
    return d
