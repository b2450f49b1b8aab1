"""What every bench figure shares: a figure, a timed command, the kernel
the harness builds and boots, found the way the harness finds it."""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import proc
from harness.workdir import WorkDir


NO_CCACHE = {"CCACHE_DISABLE": "1"}


CHANGED_FILE = "drivers/iommu/iommufd/device.c"


@dataclass
class Figure:
    what: str
    harness: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # e.g. the objects a cold build compiled

    def row(self) -> dict:
        h = statistics.median(self.harness) if self.harness else None
        f = statistics.median(self.floor) if self.floor else None
        return {"what": self.what, "harness_s": h, "floor_s": f, "ratio": h / f if h and f else None,
                "runs": len(self.harness), "harness_runs_s": self.harness, "floor_runs_s": self.floor,
                **self.extra}


def harness_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "harness", *map(str, args)]


LOG: Path | None = None  # every command's output (main sets it)


def timed(argv: list[str], env: dict | None = None) -> tuple[float, int]:
    t0 = time.monotonic()
    res = proc.run(argv, env=env, timeout=4 * 3600, keep_output=False, log=LOG)
    return time.monotonic() - t0, res.returncode


def run_results(tmp: Path, profile: str, debug: tuple[str, ...], suite: str, parallel: int, i: int) -> Path:
    """The results dir of one bench run: one of its own for each kernel,
    suite, lane count and repetition (a run never reads another's results)."""
    return tmp / f"run-{profile}-{'+'.join(debug) or 'default'}-{suite}-p{parallel}-{i}"


def results_of(results: Path) -> dict:
    try:
        return json.loads((results / "results.json").read_text())
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class Kernel:
    tree: Path  # the working copy
    origin: Path  # the pristine tree it is synced from
    build_dir: Path
    make: list[str]  # the kernel image's make, as the build stage runs it
    image: Path
    base_image: Path
    profile: object


def prepare(work: Path, profile: str, debug: tuple[str, ...], patches: list[Path],
            kernel_src: Path | None = None) -> Kernel:
    from harness.pipeline import Options, Pipeline, new_record
    from harness.ui import Ui
    from harness.workdir import WorkLock

    opts = Options.of(work=work, profile=profile, debug=debug, patches=patches, kernel_src=kernel_src)
    wd = WorkDir(work).prepare()
    with WorkLock(wd):
        pipe = Pipeline(opts, Ui(quiet=True), new_record(opts), wd.root / "logs")
        prep = pipe.prepare()
        base = pipe.make_image(prep)
    build_dir = prep.kernel.vmlinux.parent
    return Kernel(prep.tree.path, prep.tree.origin.path, build_dir,
                  prep.toolchain.make_argv(prep.tree.path, build_dir, jobs=True) + [prep.toolchain.image_target],
                  prep.kernel.image, base.path, prep.profile)
