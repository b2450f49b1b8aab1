"""The pipeline: source -> patches -> config -> build -> image -> target -> run -> results.

This module only wires the stages together: each stage takes a small request
and returns a small result, and the pipeline times it, records provenance in
the run's record and hands the result to the next stage.  The target side is
a :class:`~harness.targets.lifecycle.Lifecycle`: the run's QEMU VM, or what
a :class:`~harness.targets.place.Place` (a board: :mod:`harness.lab.place`)
gives; what a subcommand does with all this is in :mod:`harness.jobs`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness import __version__, arches, coverage, data, debugkernels, proc, profiles
from harness.errors import HarnessError, InputError
from harness.options import Options
from harness.reports.results import RunRecord, clean
from harness.stages import build, config, image, patches, source
from harness.targets.lifecycle import Lifecycle
from harness.targets.place import KernelFor, Place, TargetRequest
from harness.targets.verify import Expect
from harness.targets.vm import VmLifecycle, VmRequest
from harness.toolchain import Toolchain
from harness.ui import Ui
from harness.workdir import WorkDir

# Boards and report decoding are imported where they are used: a VM run
# starts its VM before it needs any of them.
if TYPE_CHECKING:
    from harness.parse.splats import Splat

# What a run needs once its target is up, loaded while it boots: SSH, the
# KCIDB validator, the report writers and the terminal summary.
AFTER_BOOT = ("paramiko", "jsonschema", "kcidb_io.schema", "harness.reports.kcidb", "harness.reports.markdown",
              "harness.reports.decode", "rich.console", "rich.table", "rich.markup")


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
        self.rev: str | None = opts.kernel.rev  # the commit the tree is (--rev, or the base of --commits)
        self.series_files: list[str] = []  # what the series under test touches
        self.coverage_dirs: tuple[str, ...] = ()
        self.place: Place = Place()  # the run's VM: nothing to ask
        if opts.machine.board or opts.machine.lab:
            from harness.lab import place

            self.place = place.for_options(opts.machine.board or "", opts.machine.lab, opts.machine.board_key, opts.machine.known_hosts,
                                           opts.machine.lock_wait, record, logs, say=ui.info)
        self.kernel_for = KernelFor()  # what the place asks of the kernel (after the source stage)

    @contextlib.contextmanager
    def stage(self, name: str):
        """One timed stage; the place (a lab's board: its lock) is checked
        before and after it (a run that lost its lease stops there)."""
        self.place.check()
        self.ui.stage(name)
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.record.stages[name] = round(self.record.stages.get(name, 0.0) + time.monotonic() - t0, 3)
            self.ui.stage_done(name, self.record.stages[name])
        self.place.check()

    def held(self, what: str):
        """The place held for the whole run (a lab board: locked, probed); a
        no-op for a VM."""
        return self.place.held(what)

    # -- build side --------------------------------------------------------------

    def load_series(self) -> list[patches.Patch]:
        """The default series, then --commits, then --patches; with --commits
        the tree is the range's base (``self.rev``)."""
        series: list[patches.Patch] = []
        if self.opts.kernel.default_patches:
            series += patches.load(default_series())
        n_default = len(series)
        self.rev = self.opts.kernel.rev
        if self.opts.kernel.commits:
            repo = self.opts.kernel.kernel_src.expanduser().resolve()
            self.rev, commits = patches.load_commits(repo, self.opts.kernel.commits)
            tip = commits[-1].origin.split()[1]
            self.record.inputs["commits"] = f"{self.rev}..{tip}"  # a reproducer takes exactly these
            series += commits
        for spec in self.opts.kernel.patches:
            series += patches.load(spec)
        # the series under test (not the default one): the files whose changed lines --coverage follows
        self.series_files = sorted({f for p in series[n_default:] for f in p.files})
        return series

    def config_request(self, tree: source.SourceTree, profile: profiles.Profile, tc: Toolchain,
                       build_dir: Path, kconfig_generation: str = "") -> config.ConfigRequest:
        frag_tree = tree.path / "tools/testing/selftests/iommu/config"
        k = self.kernel_for
        fragments = profile.fragments if k.fragments is None else k.fragments
        base_config = self.opts.kernel.base_config or k.base_config
        return config.ConfigRequest(
            tree.path, build_dir, tc, k.base, fragments, tuple(self.opts.kernel.kconfig_add),
            tree_fragments=(frag_tree,) if frag_tree.is_file() else (),
            user_fragments=tuple(self.opts.kernel.fragments), base_config=base_config,
            kconfig_generation=kconfig_generation,
            # the gcov core is in every kernel: --coverage only profiles a
            # few directories, an incremental rebuild of the same build dir
            debug_fragments=debugkernels.fragments(self.opts.kernel.debug) + (coverage.fragment(),),
            lsmod=k.lsmod)

    def prepare(self, until: str = "build") -> Prepared:
        opts = self.opts
        profile = profiles.load(opts.machine.profile)
        tc = Toolchain(profile.arch, jobs=opts.kernel.jobs)
        series = self.load_series()  # before any work: a bad patch input fails fast
        with self.stage("source"):
            tree = source.prepare(source.SourceRequest(opts.kernel.kernel_src, rev=self.rev), self.work,
                                  protect_fn=lambda origin, dest: patches.protected_files(origin.path, dest),
                                  show=self.ui.progress)
            self.record.kernel.update(version=tree.version, source=tree.origin.description)
            if tree.origin.git:
                self.record.kernel["git"] = dict(tree.origin.git)
                if opts.kernel.commits:
                    self.record.kernel["git"]["commits"] = self.record.inputs["commits"]
                elif opts.kernel.rev:
                    self.record.inputs["rev"] = tree.origin.git["head"]
            self.ui.info(f"kernel {tree.version} from {tree.origin.description} -> {tree.path}"
                         + (f" ({len(tree.changed)} files updated)" if tree.changed else ""))
        if opts.kernel.coverage:
            self.coverage_dirs = coverage.check_dirs(tree.origin.path, opts.kernel.coverage)
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
        self.kernel_for = self.place.kernel(profile, tree.path, arches.load(profile.arch).srcarch)
        flavour = profile.arch + debugkernels.build_suffix(opts.kernel.debug) + self.kernel_for.flavour
        build_dir = self.work.tree_build(tree.origin.key, flavour)
        dtbs = self.kernel_for.make_targets
        with self.stage("config"):
            creq = self.config_request(tree, profile, tc, build_dir, kconfig_generation)
            cfg = config.configure(creq, self.logs / "config.log")
            for line in cfg.overrides:
                self.ui.info(f"config: {line}")
            self.record.kernel.update(config_sha256=cfg.sha256, debug=list(opts.kernel.debug))
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

    def expect(self, prep: Prepared) -> Expect:
        return Expect(prep.kernel.build_id, prep.profile.iommu, prep.profile.hugepages,
                      prep.profile.qemu.smp if prep.profile.qemu is not None else None)

    def vm(self, prep: Prepared, base: image.BaseImage, results_dir: Path) -> VmLifecycle:
        """The run's VM, off; booting it adds the run's own SSH keys (in
        <work>/vm/<run>/) to the base image."""
        req = VmRequest(prep.profile, prep.kernel.image, base, results_dir, self.work.root / "vm" / results_dir.name,
                        self.work.cache, self.opts.machine.accel, self.opts.machine.boot_timeout, self.opts.machine.extra_cmdline)
        return VmLifecycle(req, self.expect(prep), guest=self.record.guest, machine=self.record.qemu,
                           say=self.ui.info)

    def target(self, prep: Prepared, results_dir: Path) -> Lifecycle:
        """The run's target, off: the place's (a board), else the run's VM."""
        lifecycle = self.place.lifecycle(TargetRequest(prep.kernel, prep.profile, results_dir, self.expect(prep),
                                                       self.record, self.opts.machine.extra_cmdline, self.ui.info))
        if lifecycle is not None:
            return lifecycle
        if prep.profile.qemu is None:
            raise InputError(f"profile {self.opts.machine.profile} is for real boards", "pass --board USER@HOST[:PORT]")
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

    src = source.debian_package_name(opts.kernel.kernel_src) or absolute(opts.kernel.kernel_src)
    return {"kernel_src": src, "rev": opts.kernel.rev, "commits": opts.kernel.commits, "default_patches": opts.kernel.default_patches,
            "patches": [absolute(p) for p in opts.kernel.patches], "kconfig_add": list(opts.kernel.kconfig_add),
            "fragments": [absolute(f) for f in opts.kernel.fragments], "config": absolute(opts.kernel.base_config),
            "cmdline": opts.machine.extra_cmdline, "debug": list(opts.kernel.debug),
            **({"coverage": list(opts.kernel.coverage)} if opts.kernel.coverage else {}),
            **({"parallel": opts.testing.parallel} if opts.testing.parallel > 1 else {}),
            # a board: USER@HOST[:PORT], or with the lab file that names it its name
            **({"board": opts.machine.board} if opts.machine.board else {}), **({"lab": absolute(opts.machine.lab)} if opts.machine.lab else {}),
            **({"tests": opts.testing.tests} if opts.testing.tests else {})}


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

    for kind, paths in (("patches", opts.kernel.patches), ("fragments", opts.kernel.fragments)):
        for i, p in enumerate(paths):
            kept[kind].append(copy(Path(p), kind, i))
    if opts.kernel.base_config is not None:
        kept["config"] = copy(Path(opts.kernel.base_config), "config", 0)
    return kept


def new_record(opts: Options) -> RunRecord:
    return RunRecord(
        suite=opts.testing.suite, profile=opts.machine.profile, inputs=inputs(opts),
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
    profile, suite = (data.named_file(n, Path())[0] for n in (opts.machine.profile, opts.testing.suite))
    return work.results / "-".join(x for x in (stamp, kind, profile, suite, secrets.token_hex(2)) if x)
