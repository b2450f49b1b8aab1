"""``make bench``: what the harness costs, next to the physical floor measured
in the same run, as medians of ``--repeat`` runs (at least 3).

For each profile and kernel (the default one and every ``--debug`` one):

- one-file build: ``iommufd-harness build`` after a change to one file of
  ``drivers/iommu/iommufd/`` (a patch that alternates between two versions
  of it), against the same incremental ``make`` of the kernel image run
  directly on the same tree and build directory.  ccache is off for both;
- run (no change): ``iommufd-harness run --suite S`` with nothing to
  rebuild, against a bare QEMU boot of the same kernel, machine and image
  whose init runs the same tests and powers off; boot (to SSH, verified)
  and the suite are shown against the bare boot's time to init and its
  tests; with ``--parallel N`` the same again with ``run --parallel N``,
  against a bare boot whose init runs the tests in N shells at once;
- edit -> verdict (``--edit``): one file of ``drivers/iommu/iommufd/``
  edited in a ``--kernel-src`` tree, then ``run`` to the verdict, against
  the same incremental ``make`` run directly plus the bare boot and tests;
- compare-base (``--compare-base``): ``run --compare-base --patches P``
  with the base cached, against the same ``run --patches P`` without it;
- lab board (``--lab-board``): on the QEMU lab board, ``run --lab`` on
  the arm64 kernel (deploy + trial boot + verify, the suite, the return),
  against the same kexec done by hand over SSH (copy, ``kexec -l``,
  ``kexec -e``, SSH again) and a plain reboot of the installed kernel;
  and a trial kernel that hangs (detected and power cycled back) against
  its budget: twice the normal trial boot plus a power cycle to SSH; and
  the same run with ``boot = "oneshot"`` (through U-Boot's hook) against
  the same by hand (copy, the one-shot script, reboot, suite, reboot);
- coverage (``--coverage``): ``run --coverage --patches P`` (P alternates
  between two one-file changes, so each run rebuilds that file) on the
  first ``--debug`` kernel (else the default one; every kernel has the gcov
  core), against the same runs without ``--coverage``: the whole
  run, the build stage, and the suite with the counters' reset and
  collection and gcovr next to the suite alone;
- cold build (``--cold``): ``iommufd-harness build`` in an empty work dir,
  against ``make`` of the kernel image with the same .config in an empty
  build directory, ccache off.

    python -m harness.bench [--work DIR] [--profile P]... [--debug D]... [--suite S]... [--repeat N] [--cold]

Figures are printed as a table (harness, floor, ratio) and written to
``<work>/bench/bench-<time>.json``.  Absolute times on a shared machine are
noise; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import debugkernels, proc
from harness.errors import HarnessError
from harness.stages.cpio import CpioWriter
from harness.targets import qemu
from harness.targets.base import IMAGE_LAYOUT
from harness.workdir import WorkDir

NO_CCACHE = {"CCACHE_DISABLE": "1"}
CHANGED_FILE = "drivers/iommu/iommufd/device.c"
FLOOR_START = "iommufd-harness floor: tests start"
FLOOR_DONE = "iommufd-harness floor: tests done"


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


def results_of(results: Path) -> dict:
    try:
        return json.loads((results / "results.json").read_text())
    except (OSError, ValueError):
        return {}


# -- what the harness builds and boots, found the way the harness finds it ---------


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

    opts = Options(work=work, profile=profile, debug=debug, patches=patches, kernel_src=kernel_src)
    wd = WorkDir(work).prepare()
    with WorkLock(wd):
        pipe = Pipeline(opts, Ui(quiet=True), new_record(opts), wd.root / "logs")
        prep = pipe.prepare()
        base = pipe.make_image(prep)
    build_dir = prep.kernel.vmlinux.parent
    return Kernel(prep.tree.path, prep.tree.origin.path, build_dir,
                  prep.toolchain.make_argv(prep.tree.path, build_dir, jobs=True) + [prep.toolchain.image_target],
                  prep.kernel.image, base.path, prep.profile)


def variants(origin: Path, out: Path) -> tuple[Path, Path, str, str]:
    """Two patches, each changing CHANGED_FILE in a different way that the
    compiler cannot ignore, and the two changed texts."""
    text = (origin / CHANGED_FILE).read_text()
    lines = text.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("#include")) + 1
    paths, texts = [], []
    for tag in ("a", "b"):
        new = lines[:at] + [f'static const char iommufd_bench_{tag}[] __used = "{tag}";\n'] + lines[at:]
        diff = "".join(difflib.unified_diff(lines, new, f"a/{CHANGED_FILE}", f"b/{CHANGED_FILE}"))
        p = out / f"bench-{tag}.patch"
        p.write_text(f"Subject: [PATCH] bench: one-file change {tag}\n\n---\n{diff}")
        paths.append(p)
        texts.append("".join(new))
    return paths[0], paths[1], texts[0], texts[1]


def make_with(k: Kernel, text: str, build_back: bool = False) -> tuple[float, int]:
    """The kernel image's make run directly on the working copy, with
    CHANGED_FILE holding ``text``: (seconds, exit code).  The file is put back
    afterwards and, with ``build_back``, built back, so the harness's next
    run starts from what it built itself."""
    target = k.tree / CHANGED_FILE
    kept = target.read_text()
    target.write_text(text)
    try:
        return timed(k.make, env=NO_CCACHE)
    finally:
        target.write_text(kept)
        if build_back:
            timed(k.make, env=NO_CCACHE)


def one_file_build(work: Path, profile: str, debug: tuple[str, ...], repeat: int, tmp: Path) -> Figure:
    fig = Figure("one-file build")
    debug_args = ["--debug", ",".join(debug)] if debug else []
    k = prepare(work, profile, debug, [])
    pa, pb, ta, tb = variants(k.origin, tmp)
    build = harness_argv("build", "--quiet", "--work", work, "--profile", profile, *debug_args)
    for i in range(repeat + 1):
        mine, other = (pa, tb) if i % 2 else (pb, ta)
        elapsed, code = timed(build + ["--patches", str(mine)], env=NO_CCACHE)
        if code != 0:
            raise HarnessError(f"bench: 'iommufd-harness build' failed (exit {code})")
        if i == 0:
            continue  # the first one only brings the tree to a variant
        fig.harness.append(elapsed)
        elapsed, code = make_with(k, other)
        if code != 0:
            raise HarnessError(f"bench: the direct make failed (exit {code}): {' '.join(k.make)}")
        fig.floor.append(elapsed)
    # back to the unchanged tree, so the runs after this one rebuild nothing
    timed(build, env=NO_CCACHE)
    return fig


def cold_build(work: Path, profile: str, debug: tuple[str, ...], repeat: int, tmp: Path) -> Figure:
    fig = Figure("cold build")
    debug_args = ["--debug", ",".join(debug)] if debug else []
    k = prepare(work, profile, debug, [])
    for i in range(repeat):
        fresh = tmp / f"cold-{i}"
        elapsed, code = timed(harness_argv("build", "--quiet", "--work", fresh, "--profile", profile, *debug_args),
                              env=NO_CCACHE)
        if code != 0:
            raise HarnessError(f"bench: cold 'iommufd-harness build' failed (exit {code})")
        fig.harness.append(elapsed)
        shutil.rmtree(fresh, ignore_errors=True)
        out = tmp / f"cold-make-{i}"
        out.mkdir()
        shutil.copyfile(k.build_dir / ".config", out / ".config")
        argv = [a if not a.startswith("O=") else f"O={out}" for a in k.make]
        timed(argv[:-1] + ["olddefconfig"], env=NO_CCACHE)
        elapsed, code = timed(argv, env=NO_CCACHE)
        if code != 0:
            raise HarnessError(f"bench: the direct cold make failed (exit {code})")
        fig.floor.append(elapsed)
        # what the guest kernel's config makes kbuild compile
        fig.extra["objects"] = sum(1 for _ in out.rglob("*.o"))
        shutil.rmtree(out, ignore_errors=True)
    return fig


# -- the bare boot -------------------------------------------------------------------


def floor_init(tests: dict[str, list[str]], hugepages: int, lanes: int = 1) -> bytes:
    """The bare boot's init: the tests one after the other, or in ``lanes``
    shells at once (round robin, as ``run --parallel`` splits them)."""
    def lane(i: int) -> str:
        return "\n".join(f'for t in {" ".join(names[i::lanes])}; do {IMAGE_LAYOUT.selftest_dir}/{binary} -r "$t" '
                         f'>> /tmp/tests.{i}.out 2>&1; done' for binary, names in tests.items() if names[i::lanes])
    if lanes == 1:
        runs = lane(0)
    else:
        runs = "\n".join(f"(\n{lane(i)}\n) &" for i in range(lanes)) + "\nwait"
    runs += "\ncat /tmp/tests.*.out > /tmp/tests.out"
    return f"""#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
mkdir -p /dev/hugepages && mount -t hugetlbfs hugetlbfs /dev/hugepages
echo {hugepages} > /proc/sys/vm/nr_hugepages
echo "{FLOOR_START}"
cd /tmp
{runs}
echo "{FLOOR_DONE} $(grep -c '^ok ' /tmp/tests.out) ok $(grep -c '^not ok ' /tmp/tests.out) not ok"
poweroff -f
""".encode()


def bare_boot(k: Kernel, tests: dict[str, list[str]], tmp: Path, accel: str,
              lanes: int = 1) -> tuple[float, float]:
    """(seconds to init, seconds of the tests) of one bare boot."""
    initrd = tmp / "floor-initrd.cpio"
    with open(initrd, "wb") as f:
        f.write(k.base_image.read_bytes())
        w = CpioWriter(f)
        w.file("/floor-init", floor_init(tests, k.profile.hugepages, lanes), 0o755)
        w.close()
    req = qemu.BootRequest(k.profile, k.image, initrd, tmp, accel, extra_cmdline="rdinit=/floor-init",
                           console_name="floor-console.log")
    vm = qemu.QemuVM(req)
    argv = vm.command_line(None, None)
    console = tmp / "floor-console.log"
    console.unlink(missing_ok=True)
    t0 = time.monotonic()
    p = proc.spawn(argv, tmp / "floor-qemu.log")
    started = None
    try:
        while p.poll() is None:
            if started is None and console.exists() and FLOOR_START in console.read_text(errors="replace"):
                started = time.monotonic()
            if time.monotonic() - t0 > 3600:
                raise HarnessError("bench: the bare boot did not finish within an hour")
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    end = time.monotonic()
    text = console.read_text(errors="replace")
    done = text[text.find(FLOOR_DONE):].split("\n", 1)[0] if FLOOR_DONE in text else ""
    want = sum(map(len, tests.values()))
    if started is None or f"{FLOOR_DONE} {want} ok 0 not ok" not in done:
        raise HarnessError(f"bench: the bare boot did not run the {want} tests cleanly ({done or 'no result'})",
                           log=str(console))
    return started - t0, end - started


def no_change_runs(work: Path, profile: str, debug: tuple[str, ...], suite: str, repeat: int,
                   tmp: Path, parallel: int = 1) -> list[Figure]:
    """The no-change run; with ``parallel`` > 1 in that many lanes
    (``--parallel``), against a bare boot whose init runs the same lanes."""
    lanes = f", --parallel {parallel}" if parallel > 1 else ""
    run_fig, boot_fig = Figure(f"run {suite} (no change{lanes})"), Figure("boot to SSH")
    suite_fig = Figure(f"{suite} suite{lanes}")
    debug_args = ["--debug", ",".join(debug)] if debug else []
    debug_args += ["--parallel", str(parallel)] if parallel > 1 else []
    k = prepare(work, profile, debug, [])
    for i in range(repeat):
        results = tmp / f"run-{profile}-{'+'.join(debug) or 'default'}-{suite}-p{parallel}-{i}"
        elapsed, code = timed(harness_argv("run", "--quiet", "--work", work, "--results", results, "--profile",
                                           profile, "--suite", suite, *debug_args))
        data = results_of(results)
        if code != 0 or data.get("verdict") != "pass":
            raise HarnessError(f"bench: the run did not pass (exit {code}): {data.get('errors')}",
                               log=str(results))
        if data["kernel"].get("rebuilt"):
            raise HarnessError("bench: a no-change run rebuilt the kernel")
        run_fig.harness.append(elapsed)
        boot_fig.harness.append(data["stages"]["boot"])
        suite_fig.harness.append(data["stages"]["run"])
        tests: dict[str, list[str]] = {}
        for t in data["tests"]:
            tests.setdefault(t["binary"], []).append(t["name"])
        to_init, testing = bare_boot(k, tests, tmp, data["qemu"]["accel"], parallel)
        run_fig.floor.append(to_init + testing)
        boot_fig.floor.append(to_init)
        suite_fig.floor.append(testing)
    return [run_fig, boot_fig, suite_fig]


def edit_to_verdict(work: Path, profile: str, suite: str, repeat: int, tmp: Path) -> Figure:
    """The developer's loop: edit one file of drivers/iommu/iommufd/ in a
    --kernel-src tree, ``run`` to the verdict; against the floor: the same
    incremental ``make`` run directly plus a bare boot of that kernel whose
    init runs the same tests.  The tree is a copy of Debian's source made
    here (its first build comes from ccache when that is warm)."""
    fig = Figure(f"edit -> verdict ({suite})")
    k0 = prepare(work, profile, (), [])
    tree = tmp / "linux"
    if not tree.exists():
        proc.run(["cp", "-a", f"{k0.origin}/.", str(tree)], timeout=1800, log=LOG)
    _, _, ta, tb = variants(k0.origin, tmp)
    argv = harness_argv("run", "--quiet", "--work", work, "--profile", profile, "--suite", suite,
                        "--kernel-src", tree)
    (tree / CHANGED_FILE).write_text(ta)
    elapsed, code = timed(argv + ["--results", tmp / "edit-first"])  # the first build of this tree
    if code != 0:
        raise HarnessError(f"bench: the first run on the copied tree failed (exit {code})", log=str(tmp / "edit-first"))
    k = prepare(work, profile, (), [], kernel_src=tree)
    for i in range(repeat):
        mine, other = (tb, ta) if i % 2 == 0 else (ta, tb)
        (tree / CHANGED_FILE).write_text(mine)
        results = tmp / f"edit-{i}"
        elapsed, code = timed(argv + ["--results", results], env=NO_CCACHE)
        data = results_of(results)
        if code != 0 or not data.get("kernel", {}).get("rebuilt"):
            raise HarnessError(f"bench: the run after an edit failed or rebuilt nothing (exit {code})",
                               log=str(results))
        fig.harness.append(elapsed)
        # the floor: the same edit built by make directly, then the bare boot
        built, code = make_with(k, other, build_back=True)
        if code != 0:
            raise HarnessError(f"bench: the direct make failed (exit {code})")
        tests: dict[str, list[str]] = {}
        for t in data["tests"]:
            tests.setdefault(t["binary"], []).append(t["name"])
        to_init, testing = bare_boot(k, tests, tmp, data["qemu"]["accel"])
        fig.floor.append(built + to_init + testing)
    return fig


def compare_base_runs(work: Path, profile: str, debug: tuple[str, ...], suite: str, repeat: int,
                      tmp: Path) -> Figure:
    """``run --compare-base --patches P`` with the base cached, against the
    same ``run --patches P`` without a base: the comparison's own cost."""
    fig = Figure(f"compare-base {suite} (cached base)")
    debug_args = ["--debug", ",".join(debug)] if debug else []
    k = prepare(work, profile, debug, [])
    series, _, _, _ = variants(k.origin, tmp)
    base = harness_argv("run", "--quiet", "--work", work, "--profile", profile, "--suite", suite, *debug_args,
                        "--patches", series)
    for i in range(repeat + 1):
        tag = f"{profile}-{'+'.join(debug) or 'default'}-{suite}-{i}"
        elapsed, code = timed(base + ["--compare-base", "--results", tmp / f"cmp-{tag}"])
        data = results_of(tmp / f"cmp-{tag}")
        if code != 0 or not data.get("base"):
            raise HarnessError(f"bench: the --compare-base run did not pass (exit {code}): {data.get('errors')}",
                               log=str(tmp / f"cmp-{tag}"))
        if i == 0:
            continue  # the first one runs (or finds) the base and builds the series
        if not data["base"].get("cached"):
            raise HarnessError("bench: the base was not cached on a second --compare-base run")
        fig.harness.append(elapsed)
        elapsed, code = timed(base + ["--results", tmp / f"plain-{tag}"])
        if code != 0:
            raise HarnessError(f"bench: the run with the series did not pass (exit {code})")
        fig.floor.append(elapsed)
    return fig


def coverage_runs(work: Path, profile: str, debug: tuple[str, ...], suite: str, repeat: int,
                  tmp: Path) -> list[Figure]:
    """``run --coverage`` after a one-file change against the same run
    without it.  Each mode runs once untimed first: switching it on or off
    rebuilds the profiled directories, which is not what a run costs."""
    run_fig, build_fig, suite_fig = (Figure(f"coverage: run {suite}"), Figure("coverage: build stage"),
                                     Figure("coverage: suite+collect"))
    debug_args = ["--debug", ",".join(debug)] if debug else []
    k = prepare(work, profile, debug, [])
    pa, pb, _, _ = variants(k.origin, tmp)
    base = harness_argv("run", "--quiet", "--work", work, "--profile", profile, "--suite", suite, *debug_args)
    for mode in ("off", "on"):
        for i in range(repeat + 1):
            results = tmp / f"cov-{mode}-{i}"
            elapsed, code = timed(base + ["--patches", pa if i % 2 else pb, "--results", results]
                                  + (["--coverage"] if mode == "on" else []))
            data = results_of(results)
            if code != 0 or data.get("verdict") != "pass" or (mode == "on") != bool(data.get("coverage")):
                raise HarnessError(f"bench: the run with coverage {mode} did not pass (exit {code}): "
                                   f"{data.get('errors')}", log=str(results))
            if i == 0:
                continue
            stages = data["stages"]
            figs = ((run_fig, elapsed), (build_fig, stages["build"]),
                    (suite_fig, stages["run"] + stages.get("coverage", 0.0)))
            for fig, value in figs:
                (fig.harness if mode == "on" else fig.floor).append(value)
    return [run_fig, build_fig, suite_fig]


def lab_board_runs(work: Path, suite: str, repeat: int, tmp: Path) -> list[Figure]:
    """The QEMU lab board: the harness's deploy, boot, verify and return
    against the same steps by hand, and a hanging trial kernel's rollback
    against its budget."""
    from harness import lab, qemuboard
    from harness.targets import deploy

    dest = tmp / "qemu-board"
    qemuboard.create(dest, WorkDir(work))
    board = proc.spawn(harness_argv("qemu-board", "start", dest), LOG)
    entry = lab.load(dest / "lab.toml").board("qemu-board")

    def wait_ssh(not_boot_id: str, limit: float = 300) -> tuple[float, str]:
        """The same wait the harness does (deploy.wait_booted)."""
        t0 = time.monotonic()
        booted = deploy.wait_booted(entry, not_boot_id, t0 + limit)
        if booted is None:
            raise HarnessError("bench: the QEMU lab board did not answer over SSH", log=str(dest / "console.log"))
        return time.monotonic() - t0, booted.boot_id

    def ssh(script: str, timeout: float = 120):
        c = deploy.client(entry)
        c.connect()
        try:
            return c.run(["sh", "-c", script], timeout)
        finally:
            c.close()

    run = Figure(f"lab board: run {suite} (deploy..return)")
    oneshot = Figure(f"lab board: oneshot run {suite}")
    deployed = Figure("lab board: deploy + trial boot")
    back = Figure("lab board: return to installed")
    hang = Figure("lab board: hanging kernel rolled back (budget)")
    try:
        _, boot_id = wait_ssh("")
        k = prepare(work, "arm64-smmuv3", (), [])
        image = k.build_dir / "arch/arm64/boot/Image"
        initrd = json.loads((dest / "board.json").read_text())["installed"]["initrd"]
        trial_boots = []
        for i in range(repeat):
            res = tmp / f"lab-{i}"
            elapsed, code = timed(harness_argv("run", "--quiet", "--work", work, "--lab", dest / "lab.toml",
                                               "--board", "qemu-board", "--suite", suite, "--results", res))
            data = results_of(res)
            if code != 0:
                raise HarnessError(f"bench: the lab board run did not pass (exit {code}): {data.get('errors')}",
                                   log=str(res))
            run.harness.append(elapsed)
            deployed.harness.append(data["stages"]["boot"])
            back.harness.append(data["board"]["return"]["seconds"])
            trial_boots.append(data["board"]["deploy"]["wait_s"])
            # the floor: the same kexec by hand, then a plain reboot of the installed kernel
            t0 = time.monotonic()
            c = deploy.client(entry)
            c.connect()
            c.run(["mkdir", "-p", "/boot/bench"], 30)
            c.put("/boot/bench/Image", image.read_bytes(), 0o644, timeout=600)
            boot_id = c.run(["cat", "/proc/sys/kernel/random/boot_id"], 30).text.strip()
            c.run(["sh", "-c", f'kexec -l /boot/bench/Image --initrd={initrd} --append="$(cat /proc/cmdline)" && '
                               "(setsid sh -c 'sleep 1; kexec -e' </dev/null >/dev/null 2>&1 &)"], 120)
            c.close()
            _, boot_id = wait_ssh(boot_id)
            deployed.floor.append(time.monotonic() - t0)
            t0 = time.monotonic()
            ssh("(setsid sh -c 'sleep 1; reboot -f' </dev/null >/dev/null 2>&1 &)")
            _, boot_id = wait_ssh(boot_id)
            back.floor.append(time.monotonic() - t0)
            t0 = time.monotonic()
            ssh("(setsid sh -c 'sleep 1; reboot -f' </dev/null >/dev/null 2>&1 &)")
            _, boot_id = wait_ssh(boot_id)
            reboot_s = time.monotonic() - t0
            run.floor.append(deployed.floor[-1] + data["stages"].get("run", 0.0) + reboot_s)
            ssh("rm -rf /boot/bench")
        # oneshot: the harness through U-Boot's hook, against the same by hand (copy, the script, reboot)
        oneshot_lab = dest / "lab-oneshot.toml"
        oneshot_lab.write_text((dest / "lab.toml").read_text().replace('boot = "kexec"', 'boot = "oneshot"'))
        for i in range(repeat):
            res = tmp / f"lab-oneshot-{i}"
            elapsed, code = timed(harness_argv("run", "--quiet", "--work", work, "--lab", oneshot_lab,
                                               "--board", "qemu-board", "--suite", suite, "--results", res))
            data = results_of(res)
            if code != 0 or data["board"]["deploy"].get("method") != "oneshot":
                raise HarnessError(f"bench: the oneshot lab board run did not pass (exit {code}): "
                                   f"{data.get('errors')}", log=str(res))
            oneshot.harness.append(elapsed)
            t0 = time.monotonic()
            c = deploy.client(entry)
            c.connect()
            cmdline = c.run(["cat", "/proc/cmdline"], 30).text.strip()
            c.run(["mkdir", "-p", "/boot/bench", deploy.REMOTE_ROOT], 30)
            c.put("/boot/bench/Image", image.read_bytes(), 0o644, timeout=600)
            script = deploy.oneshot_script("bench", "/bench", "Image", None,
                                           initrd[len(deploy.BOOT_MOUNT):], cmdline)
            c.put(deploy.BOOT_MOUNT + deploy.ONESHOT_SCRIPT, deploy.compile_script(script), 0o644, timeout=60)
            boot_id = c.run(["cat", "/proc/sys/kernel/random/boot_id"], 30).text.strip()
            c.run(["sh", "-c", "sync; (setsid sh -c 'sleep 1; reboot -f' </dev/null >/dev/null 2>&1 &)"], 60)
            c.close()
            _, boot_id = wait_ssh(boot_id)
            up = time.monotonic() - t0
            t0 = time.monotonic()
            ssh("(setsid sh -c 'sleep 1; reboot -f' </dev/null >/dev/null 2>&1 &)")
            _, boot_id = wait_ssh(boot_id)
            oneshot.floor.append(up + data["stages"].get("run", 0.0) + time.monotonic() - t0)
            ssh(f"rm -rf /boot/bench {deploy.REMOTE_ROOT}")
        normal = statistics.median(trial_boots)
        for i in range(repeat):
            res = tmp / f"lab-hang-{i}"
            timed(harness_argv("run", "--quiet", "--work", work, "--lab", dest / "lab.toml", "--board",
                               "qemu-board", "--suite", suite, "--results", res,
                               "--cmdline", "panic=0 rdinit=/nonexistent init=/nonexistent"))
            data = results_of(res)
            if not data.get("board", {}).get("return", {}).get("ok"):
                raise HarnessError(f"bench: the hanging trial kernel was not rolled back: {data.get('errors')}",
                                   log=str(res))
            hang.harness.append(data["board"]["deploy"]["wait_s"] + data["board"]["return"]["seconds"])
            # the budget: twice the normal trial boot, plus a power cycle to SSH
            boot_id = ssh("cat /proc/sys/kernel/random/boot_id").text.strip()
            t0 = time.monotonic()
            qemuboard.reset(dest)
            wait_ssh(boot_id)
            hang.floor.append(2 * normal + time.monotonic() - t0)
    finally:
        board.terminate()
        try:
            board.wait(60)
        except Exception:
            board.kill()
    return [run, oneshot, deployed, back, hang]


def fmt(v: float | None, unit: str = " s") -> str:
    return "-" if v is None else f"{v:.1f}{unit}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("work"), help="work dir (default ./work; builds are reused)")
    ap.add_argument("--profile", action="append", help="default x86_64-vtd (repeatable)")
    ap.add_argument("--debug", action="append", default=None,
                    help="a debug kernel to measure next to the default one, e.g. lockdep,kasan (repeatable)")
    ap.add_argument("--suite", action="append", help="default access (repeatable)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    ap.add_argument("--cold", action="store_true", help="also time cold builds (long)")
    ap.add_argument("--no-build", action="store_true", help="skip the one-file build")
    ap.add_argument("--no-run", action="store_true", help="skip the no-change runs")
    ap.add_argument("--parallel", type=int, default=1, metavar="N",
                    help="also time the no-change runs with --parallel N, against a bare boot running the tests "
                         "in N lanes")
    ap.add_argument("--no-default-kernel", action="store_true", help="measure only the --debug kernels")
    ap.add_argument("--edit", action="store_true",
                    help="also time the edit -> verdict loop on a --kernel-src tree against make + a bare boot "
                         "(default kernel, first suite)")
    ap.add_argument("--lab-board", action="store_true",
                    help="also time a run on the QEMU lab board (kexec deploy, trial boot, return) against the "
                         "same steps by hand, and a hanging trial kernel's rollback against its budget")
    ap.add_argument("--coverage", action="store_true",
                    help="also time run --coverage (after a one-file change) against the same run without it "
                         "(the first --debug kernel, else the default one; first suite)")
    ap.add_argument("--compare-base", action="store_true",
                    help="also time run --compare-base with a cached base against the same run without it "
                         "(default kernel, first suite)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    work = args.work.expanduser().resolve()
    global LOG
    stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    LOG = WorkDir(work).root / "bench" / f"bench-{stamp}.log"
    LOG.parent.mkdir(parents=True, exist_ok=True)
    kernels = [()] * (not args.no_default_kernel) + [debugkernels.parse([d]) for d in (args.debug or [])]
    if not kernels:
        ap.error("--no-default-kernel needs a --debug kernel")
    cov_kernel = next((d for d in kernels if d), kernels[0])  # the gate's kernel: the first --debug one
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="iommufd-bench-"))
    try:
        for profile in args.profile or ["x86_64-vtd"]:
            for debug in kernels:
                label = f"{profile} {'+'.join(debug) or 'default'}"
                figs: list[Figure] = []
                if args.cold:
                    figs.append(cold_build(work, profile, debug, args.repeat, tmp))
                if not args.no_build:
                    figs.append(one_file_build(work, profile, debug, args.repeat, tmp))
                for suite in (args.suite or ["access"]) if not args.no_run else []:
                    figs += no_change_runs(work, profile, debug, suite, args.repeat, tmp)
                    if args.parallel > 1:
                        figs += no_change_runs(work, profile, debug, suite, args.repeat, tmp, args.parallel)
                if args.edit and not debug:
                    figs.append(edit_to_verdict(work, profile, (args.suite or ["access"])[0], args.repeat, tmp))
                if args.compare_base and not debug:
                    figs.append(compare_base_runs(work, profile, debug, (args.suite or ["access"])[0], args.repeat,
                                                  tmp))
                if args.coverage and debug == cov_kernel and profile == (args.profile or ["x86_64-vtd"])[0]:
                    figs += coverage_runs(work, profile, debug, (args.suite or ["access"])[0], args.repeat, tmp)
                if args.lab_board and not debug and profile == (args.profile or ["x86_64-vtd"])[0]:
                    figs += lab_board_runs(work, (args.suite or ["access"])[0], args.repeat, tmp)
                for fig in figs:
                    row = {"kernel": label, **fig.row()}
                    rows.append(row)
                    print(f"{label:32} {row['what']:24} harness {fmt(row['harness_s']):>8}  floor "
                          f"{fmt(row['floor_s']):>8}  ratio {fmt(row['ratio'], 'x'):>6}  ({row['runs']} runs"
                          + (f", {row['objects']} objects" if "objects" in row else "") + ")",
                          flush=True)
    except HarnessError as e:
        print(e.render() + f"\n(every command's output: {LOG})", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = LOG.with_suffix(".json")
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
