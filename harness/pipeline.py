"""The pipeline: source -> patches -> config -> build -> image -> target -> run -> results.

This module only wires the stages together: each stage takes a small request
and returns a small result, and the pipeline times it, records provenance in
the run's record and hands the result to the next stage.  The target side is
a :class:`~harness.targets.lifecycle.Lifecycle` (a QEMU VM or a board); what
a subcommand does with all this is in :mod:`harness.jobs`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness import __version__, arches, coverage, data, debugkernels, proc, profiles, suites
from harness.errors import HarnessError, InputError
from harness.reports.results import RunRecord, clean
from harness.stages import build, config, image, patches, source
from harness.targets.lifecycle import Lifecycle
from harness.targets.verify import Expect
from harness.targets.vm import VmLifecycle, VmRequest
from harness.toolchain import Toolchain
from harness.ui import Ui
from harness.workdir import WorkDir

# Boards, labs and report decoding are imported where they are used: a VM run
# starts its VM before it needs any of them.
if TYPE_CHECKING:
    from harness import lab
    from harness.parse.splats import Splat
    from harness.targets.board import BoardLifecycle, BoardSpec

# What a run needs once its target is up, loaded while it boots: SSH, the
# KCIDB validator, the report writers and the terminal summary.
AFTER_BOOT = ("paramiko", "jsonschema", "kcidb_io.schema", "harness.reports.kcidb", "harness.reports.markdown",
              "harness.reports.decode", "rich.console", "rich.table", "rich.markup")


@dataclass
class Options:
    work: Path
    kernel_src: Path | None = None
    rev: str | None = None  # test this commit of the --kernel-src repository (--rev)
    commits: str | None = None  # the series is this git range of --kernel-src, on its base (--commits A..B)
    compare_base: bool = False  # run the tree without the series first, gate on what the series changed
    patches: list[Path] = field(default_factory=list)
    default_patches: bool = True
    profile: str = profiles.DEFAULT_PROFILE
    suite: str = suites.DEFAULT_SUITE
    tests: str | None = None
    results: Path | None = None
    jobs: int = 0
    keep_vm: bool = False
    accel: str = "auto"
    boot_timeout: float = 300.0
    extra_cmdline: str = ""
    per_test_timeout: float | None = None
    parallel: int = 1  # tests at a time in the guest
    kconfig_add: list[str] = field(default_factory=list)
    fragments: list[Path] = field(default_factory=list)
    base_config: Path | None = None
    baseline: Path | None = None
    rerun_failed: int = 0
    continue_after_crash: bool = False
    debug: tuple[str, ...] = ()  # debug kernels from configs/debug/ (--debug)
    board: str | None = None  # USER@HOST[:PORT] of a real board instead of a VM; with --lab a board's name
    lab: Path | None = None  # --lab: the lab file that describes --board
    lock_wait: float = 0.0  # seconds to wait for a board another run holds
    board_key: Path = Path("~/.ssh/id_ed25519")
    known_hosts: Path = Path("~/.ssh/known_hosts")
    verbose: bool = False  # the summary lists passing tests too
    repeat: int = 1  # run the selected tests this many times in one boot (repro --repeat)
    until_fail: bool = False  # ... stopping after the first attempt that does not pass
    shell: bool = False  # after the tests, an interactive SSH shell in the guest (repro --shell)
    coverage: tuple[str, ...] = ()  # --coverage: the directories profiled with gcov (empty: off)


@dataclass(frozen=True)
class Prepared:
    tree: source.SourceTree
    series: tuple[patches.Patch, ...]
    config: config.ConfigResult
    kernel: build.KernelBuild | None  # None when stopped after config
    toolchain: Toolchain
    profile: profiles.Profile
    config_request: config.ConfigRequest


def default_series() -> Path:
    return data.folder("kernel-patches") / "default"


class Pipeline:
    def __init__(self, opts: Options, ui: Ui, record: RunRecord, logs: Path):
        self.opts = opts
        self.ui = ui
        self.record = record
        self.logs = logs
        self.work = WorkDir(opts.work)
        self.rev: str | None = opts.rev  # the commit the tree is (--rev, or the base of --commits)
        self.series_files: list[str] = []  # what the series under test touches
        self.coverage_dirs: tuple[str, ...] = ()
        self.lab: lab.Lab | None = None
        self.entry: lab.BoardEntry | None = None  # --lab --board: the lab's board
        self.board_facts: dict | None = None  # what the lab board told before the build
        self.lock = None  # --lab: the board's lock while the run holds it (lab.BoardLock, labgrid.PlaceLock)
        if opts.lab is not None:
            from harness import lab

            self.lab = lab.load(opts.lab)
            self.entry = self.lab.board(opts.board or "")

    @contextlib.contextmanager
    def stage(self, name: str):
        """One timed stage; with --lab, the board's lock is checked before
        and after it (a run that lost its lease stops there)."""
        self.check_lock()
        self.ui.stage(name)
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.record.stages[name] = round(self.record.stages.get(name, 0.0) + time.monotonic() - t0, 3)
            self.ui.stage_done(name, self.record.stages[name])
        self.check_lock()

    def check_lock(self) -> None:
        """With --lab: raise lab.LockLost if the run no longer holds its board."""
        if self.lock is not None:
            self.lock.check()

    # -- build side --------------------------------------------------------------

    def load_series(self) -> list[patches.Patch]:
        """The default series, then --commits, then --patches; with --commits
        the tree is the range's base (``self.rev``)."""
        series: list[patches.Patch] = []
        if self.opts.default_patches:
            series += patches.load(default_series())
        n_default = len(series)
        self.rev = self.opts.rev
        if self.opts.commits:
            repo = self.opts.kernel_src.expanduser().resolve()
            self.rev, commits = patches.load_commits(repo, self.opts.commits)
            tip = commits[-1].origin.split()[1]
            self.record.inputs["commits"] = f"{self.rev}..{tip}"  # a reproducer takes exactly these
            series += commits
        for spec in self.opts.patches:
            series += patches.load(spec)
        # the series under test (not the default one): the files whose changed lines --coverage follows
        self.series_files = sorted({f for p in series[n_default:] for f in p.files})
        return series

    def config_request(self, tree: source.SourceTree, profile: profiles.Profile, tc: Toolchain,
                       build_dir: Path, kconfig_generation: str = "") -> config.ConfigRequest:
        frag_tree = tree.path / "tools/testing/selftests/iommu/config"
        base, fragments, base_config, lsmod = "tinyconfig", profile.fragments, self.opts.base_config, None
        if self.board_kernel() in ("running", "defconfig"):
            # the board's own kernel (or the arch's defconfig) with what the
            # board has loaded built in, plus the board fragments
            fragments = profile.board_fragments
            lsmod = self.board_facts["lsmod_file"]
            if self.board_kernel() == "running" and base_config is None:
                base_config = self.board_facts["config_file"]
            base = "defconfig"
        return config.ConfigRequest(
            tree.path, build_dir, tc, base, fragments, tuple(self.opts.kconfig_add),
            tree_fragments=(frag_tree,) if frag_tree.is_file() else (),
            user_fragments=tuple(self.opts.fragments), base_config=base_config,
            kconfig_generation=kconfig_generation,
            # the gcov core is in every kernel: --coverage only profiles a
            # few directories, an incremental rebuild of the same build dir
            debug_fragments=debugkernels.fragments(self.opts.debug) + (coverage.fragment(),),
            lsmod=lsmod)

    def board_kernel(self) -> str | None:
        """How the lab board's trial kernel is configured (None: no trial kernel)."""
        if self.entry is None or self.entry.boot == "installed":
            return None
        return self.entry.kernel_config

    def build_flavour(self, profile: profiles.Profile) -> str:
        flavour = profile.arch + debugkernels.build_suffix(self.opts.debug)
        if self.board_kernel() in ("running", "defconfig"):
            flavour += f"+board-{self.entry.name}"  # a config of its own: a build dir of its own
        return flavour

    def dtb_target(self, tree: source.SourceTree, profile: profiles.Profile) -> tuple[str, ...]:
        """The board's dtb as a make target, checked against the tree."""
        dtb = self.entry.dtb if self.board_kernel() else None
        if not dtb or dtb == "firmware":
            return ()
        srcarch = arches.load(profile.arch).srcarch
        dts = tree.path / "arch" / srcarch / "boot/dts" / (dtb.removesuffix(".dtb") + ".dts")
        if not dtb.endswith(".dtb") or not dts.is_file():
            raise InputError(f"board {self.entry.name}: dtb {dtb!r} is not in this tree (no "
                             f"arch/{srcarch}/boot/dts/{dts.name} under {dts.parent.relative_to(tree.path)})",
                             f"fix 'dtb' in {self.lab.path}: a path under arch/{srcarch}/boot/dts ending in .dtb, "
                             "or \"firmware\" for the board's own")
        return (dtb,)

    def prepare(self, until: str = "build") -> Prepared:
        opts = self.opts
        profile = profiles.load(opts.profile)
        tc = Toolchain(profile.arch, jobs=opts.jobs)
        series = self.load_series()  # before any work: a bad patch input fails fast
        with self.stage("source"):
            tree = source.prepare(source.SourceRequest(opts.kernel_src, rev=self.rev), self.work,
                                  protect_fn=lambda origin, dest: patches.protected_files(origin.path, dest),
                                  show=self.ui.progress)
            self.record.kernel.update(version=tree.version, source=tree.origin.description)
            if tree.origin.git:
                self.record.kernel["git"] = dict(tree.origin.git)
                if opts.commits:
                    self.record.kernel["git"]["commits"] = self.record.inputs["commits"]
                elif opts.rev:
                    self.record.inputs["rev"] = tree.origin.git["head"]
            self.ui.info(f"kernel {tree.version} from {tree.origin.description} -> {tree.path}"
                         + (f" ({len(tree.changed)} files updated)" if tree.changed else ""))
        if opts.coverage:
            self.coverage_dirs = coverage.check_dirs(tree.origin.path, opts.coverage)
            series = series + [coverage.profile_patch(tree.origin.path, self.coverage_dirs)]
        with self.stage("patches"):
            applied = patches.apply_series(tree.origin.path, tree.path, series, set(tree.protected),
                                           self.logs / "patches.log", version=tree.version)
            self.record.patches = []
            for i, p in enumerate(applied.applied):
                rec = {**p.record(), "status": applied.status(i)}
                if i in applied.not_for:
                    rec["reason"] = applied.not_for[i]
                self.record.patches.append(rec)
                note = {"already in tree": " (already in the tree: skipped)",
                        "not for this tree": f" (not applied: {applied.not_for.get(i)})"}.get(rec["status"], "")
                self.ui.info(f"patch {p.name}: {p.subject}{note}")
        changed = tree.changed + applied.changed
        generation = source.bump_generation(tree.path, changed)
        kconfig_generation = source.bump_generation(tree.path, [p for p in changed if source.is_kconfig(p)],
                                                    source.KCONFIG_GENERATION_FILE)
        build_dir = self.work.tree_build(tree.origin.key, self.build_flavour(profile))
        dtbs = self.dtb_target(tree, profile)
        with self.stage("config"):
            creq = self.config_request(tree, profile, tc, build_dir, kconfig_generation)
            cfg = config.configure(creq, self.logs / "config.log")
            for line in cfg.overrides:
                self.ui.info(f"config: {line}")
            self.record.kernel.update(config_sha256=cfg.sha256, debug=list(opts.debug))
            shutil.copy2(cfg.config, self.logs.parent / "kernel.config")  # the .config the kernel was built with
        if until == "config":
            return Prepared(tree, tuple(series), cfg, None, tc, profile, creq)
        with self.stage("build"):
            kb = build.build(build.BuildRequest(tree.path, build_dir, tc, cfg.sha256, generation,
                                                extra_targets=dtbs),
                             self.logs / "build.log", show=self.ui.progress)
            self.record.kernel.update(build_id=kb.build_id, rebuilt=kb.rebuilt, arch=tc.arch,
                                      toolchain=tc.cc + (" (ccache)" if tc.ccache else ""))
            self.ui.info(("built" if kb.rebuilt else "up to date:") + f" {kb.image} (build-id {kb.build_id[:16]})")
        if dtbs:
            self.record.kernel["dtb"] = dtbs[0]
        return Prepared(tree, tuple(series), cfg, kb, tc, profile, creq)

    # -- target side ----------------------------------------------------------------

    def make_image(self, prep: Prepared) -> image.BaseImage:
        with self.stage("image"):
            recipe = image.Recipe.load(prep.profile.recipe)
            req = image.ImageRequest(recipe, prep.profile.arch, prep.kernel.selftests)
            base = image.build_base(req, self.work.images, self.work.cache, self.logs / "image.log")
            self.record.image = {"recipe": recipe.name, "file": base.path.name, "rebuilt": base.rebuilt,
                                 "packages": base.packages}
            self.ui.info(("built" if base.rebuilt else "cached:") + f" {base.path.name}")
            return base

    def expect(self, prep: Prepared, any_kernel: bool = False) -> Expect:
        return Expect(None if any_kernel else prep.kernel.build_id, prep.profile.iommu, prep.profile.hugepages,
                      prep.profile.qemu.smp if prep.profile.qemu is not None else None)

    def vm(self, prep: Prepared, base: image.BaseImage, results_dir: Path) -> VmLifecycle:
        """The run's VM, off; booting it adds the run's own SSH keys (in
        <work>/vm/<run>/) to the base image."""
        req = VmRequest(prep.profile, prep.kernel.image, base, results_dir, self.work.root / "vm" / results_dir.name,
                        self.work.cache, self.opts.accel, self.opts.boot_timeout, self.opts.extra_cmdline)
        return VmLifecycle(req, self.expect(prep), guest=self.record.guest, machine=self.record.qemu,
                           say=self.ui.info)

    def board(self, prep: Prepared, spec: BoardSpec, results_dir: Path) -> BoardLifecycle:
        """A board that keeps its own kernel, off; the selftests and helper
        scripts built here are copied there at boot."""
        from harness.targets.board import BoardLifecycle

        return BoardLifecycle(spec, self.files_for_board(prep), prep.profile.arch, results_dir,
                              self.expect(prep, any_kernel=True), prep.kernel.build_id, name=prep.profile.name, guest=self.record.guest,
                              say=self.ui.info)

    def board_spec(self) -> BoardSpec | None:
        """--board, checked (before anything is built)."""
        if not self.opts.board:
            return None
        from harness.targets import deploy
        from harness.targets.board import BoardSpec

        if self.entry is not None:
            return deploy.spec_of(self.entry)
        return BoardSpec.parse(self.opts.board, self.opts.board_key, self.opts.known_hosts)

    @contextlib.contextmanager
    def lab_board(self, what: str):
        """With --lab: the board locked for the whole run (and checked: not
        quarantined, reachable with its pinned key, what it runs); a no-op
        otherwise."""
        if self.entry is None:
            yield
            return
        from harness import lab, labgrid
        from harness.targets import deploy

        place = self.lab.place(self.entry)
        if place is not None:
            lock = labgrid.PlaceLock(place, self.entry.name, wait=self.opts.lock_wait, say=self.ui.info)
        else:
            lock = lab.BoardLock(lab.LabState(self.lab.state), self.entry.name, what, wait=self.opts.lock_wait,
                                 say=self.ui.info)
        with lock:
            self.lock = lock
            try:
                if place is not None:
                    followed = None
                    if self.entry.console is None:  # the lab file's own console command comes first
                        followed = lock.follow_console(self.logs / "labgrid-console.log")
                    self.entry = place.resolve(self.entry, lock.console.log if lock.console else None)
                    self.ui.info(f"board {self.entry.name}: labgrid place {place.name} acquired "
                                 f"({self.entry.user}@{self.entry.host}:{self.entry.port})"
                                 + (f", its console followed (NetworkSerialPort {followed.get('host')}:"
                                    f"{followed.get('port')})" if followed else ""))
                else:
                    self.ui.info(f"board {self.entry.name}: locked ({lab.holder_name()})")
                self.record.guest["board"] = self.entry.name  # the lab's name for it (a merged matrix's cell)
                facts = deploy.probe(self.entry, fetch_config=self.board_kernel() in ("running", "defconfig"),
                                     into=self.logs)
                self.board_facts = facts
                self.ui.info(f"board {self.entry.name}: runs {facts['release']} ({facts['machine']}), "
                             f"kexec {'yes' if facts['kexec'] else 'no'}")
                yield
            finally:
                self.lock = None  # released on the way out: nothing to check any more

    def files_for_board(self, prep: Prepared) -> dict[str, tuple[Path, int]]:
        recipe = prep.profile.recipe
        files = {f"selftests/{n}": (p, 0o755) for n, p in prep.kernel.selftests.items()}
        files["run-tests"] = (recipe / "run-tests", 0o755)
        files["killtree"] = (recipe / "killtree", 0o755)
        files["hangcheck"] = (recipe / "hangcheck", 0o755)
        files["leakcheck"] = (recipe / "leakcheck", 0o755)
        return files

    def trial_board(self, prep: Prepared, results_dir: Path) -> Lifecycle:
        """The lab board, off: booting it deploys the kernel built here."""
        from harness import lab
        from harness.targets import deploy

        entry = self.entry
        dtb = self.record.kernel.get("dtb")
        trial = deploy.TrialKernel(prep.kernel.image, prep.kernel.vmlinux, prep.kernel.build_id,
                                   prep.kernel.image.parents[0] / "dts" / dtb if dtb else None)
        lifecycle = deploy.OneshotLifecycle if entry.boot == "oneshot" else deploy.KexecLifecycle
        return lifecycle(entry, self.files_for_board(prep), prep.profile.arch, results_dir,
                         self.expect(prep), trial, self.lab.place(entry) or lab.LabState(self.lab.state),
                         results_dir.name,
                         extra_cmdline=self.opts.extra_cmdline, lab_path=self.lab.path, name=prep.profile.name,
                         guest=self.record.guest, machine=self.record.board, say=self.ui.info)

    def target(self, prep: Prepared, results_dir: Path, spec: BoardSpec | None) -> Lifecycle:
        """The lifecycle the options ask for: a board with --board, else a VM."""
        if self.board_kernel():
            return self.trial_board(prep, results_dir)
        if spec is not None:
            return self.board(prep, spec, results_dir)
        if prep.profile.qemu is None:
            raise InputError(f"profile {self.opts.profile} is for real boards", "pass --board USER@HOST[:PORT]")
        return self.vm(prep, self.make_image(prep), results_dir)

    @contextlib.contextmanager
    def up(self, lifecycle: Lifecycle):
        """The target booted and verified (timed as the "boot" stage), torn
        down on exit whatever happens."""
        with lifecycle:
            with self.stage("boot"):
                # imported in the background once the machine boots: before,
                # the import would hold the interpreter while QEMU is started,
                # after, it would hold the verdict (reports, the summary table)
                lifecycle.on_boot = lambda: proc.preload(*AFTER_BOOT)
                lifecycle.up()
            yield lifecycle

    @staticmethod
    def has_kmemleak(prep: Prepared) -> bool:
        """Whether the kernel was built with kmemleak (--debug kmemleak, or a
        configuration that has it): then the run scans for leaks."""
        cfg = prep.config.config if prep.config is not None else None
        return cfg is not None and cfg.is_file() and \
            config.kconfig.read_config(cfg).get("CONFIG_DEBUG_KMEMLEAK") == "y"

    def decode_splats(self, prep: Prepared, found: list[tuple[str | None, Splat]], limit: int = 5) -> None:
        """Symbolised call traces (scripts/decode_stacktrace.sh + vmlinux) for
        the first reports that were attributed to tests, into their logs."""
        from harness.reports.decode import decode

        by_name = {t.name: t for t in self.record.tests}
        for name, s in [(n, s) for n, s in found if n][:limit]:
            text = decode(s, prep.tree.path, prep.kernel.vmlinux, self.logs / "decode.log")
            if text and name in by_name:
                rec = by_name[name]
                rec.log = clean(rec.log + f"\n--- decoded {s.kind} ---\n{text}")


def inputs(opts: Options) -> dict:
    """What defines the kernel and the machine of a run, with absolute paths:
    enough to build and boot the same again (see reports.repro)."""
    def absolute(p: Path | None) -> str | None:
        return str(p.expanduser().resolve()) if p is not None else None

    src = source.debian_package_name(opts.kernel_src) or absolute(opts.kernel_src)
    return {"kernel_src": src, "rev": opts.rev, "commits": opts.commits, "default_patches": opts.default_patches,
            "patches": [absolute(p) for p in opts.patches], "kconfig_add": list(opts.kconfig_add),
            "fragments": [absolute(f) for f in opts.fragments], "config": absolute(opts.base_config),
            "cmdline": opts.extra_cmdline, "debug": list(opts.debug),
            **({"coverage": list(opts.coverage)} if opts.coverage else {}),
            **({"parallel": opts.parallel} if opts.parallel > 1 else {}),
            # a board: USER@HOST[:PORT], or with the lab file that names it its name
            **({"board": opts.board} if opts.board else {}), **({"lab": absolute(opts.lab)} if opts.lab else {}),
            **({"tests": opts.tests} if opts.tests else {})}


KEPT = "inputs"  # <results>/inputs/: copies of the run's patches, fragments and --config


def keep_inputs(opts: Options, results: Path) -> dict:
    """Copy what defines the kernel besides the tree (the --patches files or
    directories, the --fragment files, --config) into ``results``/inputs/,
    so the results dir reproduces the run elsewhere (``repro`` falls back on
    them when the recorded paths are gone); their paths, relative to
    ``results``, for ``inputs["kept"]``."""
    import shutil

    kept: dict = {"patches": [], "fragments": []}

    def copy(src: Path, kind: str, i: int) -> str | None:
        src = src.expanduser()
        rel = Path(KEPT) / kind / f"{i}-{src.name}"
        dest = results / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if src.is_dir():
                shutil.copytree(src, dest, dirs_exist_ok=True)
            elif src.is_file():
                shutil.copy2(src, dest)
            else:
                return None
        except OSError:
            return None
        return str(rel)

    for kind, paths in (("patches", opts.patches), ("fragments", opts.fragments)):
        for i, p in enumerate(paths):
            kept[kind].append(copy(Path(p), kind, i))
    if opts.base_config is not None:
        kept["config"] = copy(Path(opts.base_config), "config", 0)
    return kept


def new_record(opts: Options) -> RunRecord:
    return RunRecord(
        suite=opts.suite, profile=opts.profile, inputs=inputs(opts),
        started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        harness={"version": __version__, "host": platform.node(), "python": platform.python_version(),
                 "argv": list(map(str, os.sys.argv))},
    )


def results_dir_for(opts: Options, work: WorkDir, kind: str = "") -> Path:
    """--results, or a new dir under <work>/results named by the time,
    ``kind`` (e.g. "walk"), profile and suite."""
    if opts.results is not None:
        path = opts.results.expanduser().resolve()
        if any((path / f).exists() for f in ("results.json", "progress.jsonl", "walk.json")):
            raise HarnessError(f"results dir {path} already holds another run",
                               "pass an empty or new directory with --results")
        return path
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    profile, suite = (data.named_file(n, Path())[0] for n in (opts.profile, opts.suite))
    return work.results / "-".join(x for x in (stamp, kind, profile, suite, secrets.token_hex(2)) if x)
