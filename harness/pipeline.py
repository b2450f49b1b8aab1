"""The pipeline: source -> patches -> config -> build -> image -> boot -> run -> results.

Each stage is its own module with small request/result dataclasses; this
module only wires them together, times them and records provenance.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness import __version__, profiles, suites

from harness.reports import baseline

from harness.targets import board

from harness.stages import build

from harness.stages import config

from harness.stages import image

from harness.stages import patches

from harness.targets import qemu

from harness.run import runner

from harness.stages import source

from harness.parse import splats
from harness.errors import HarnessError
from harness.reports.results import ResultsDir, RunRecord, TestRecord, clean
from harness.targets.ssh import SshClient
from harness.targets.base import QemuTarget
from harness.toolchain import Toolchain
from harness.ui import Ui
from harness.workdir import WorkDir

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SERIES = REPO / "kernel-patches" / "default"


@dataclass
class Options:
    work: Path
    kernel_src: Path | None = None
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
    kconfig_add: list[str] = field(default_factory=list)
    fragments: list[Path] = field(default_factory=list)
    base_config: Path | None = None
    baseline: Path | None = None
    rerun_failed: int = 0
    continue_after_crash: bool = False
    board: str | None = None  # USER@HOST[:PORT] of a real board instead of a VM
    board_key: Path = Path("~/.ssh/id_ed25519")
    known_hosts: Path = Path("~/.ssh/known_hosts")


MAX_REBOOTS = 3  # --continue-after-crash: at most this many reboots per run


@dataclass
class Session:
    """A booted target; ``reboot()`` replaces the VM with a fresh one."""

    target: QemuTarget | board.BoardTarget
    ssh_cmd: str
    reboot: Callable[[], QemuTarget]


@dataclass(frozen=True)
class Prepared:
    tree: source.SourceTree
    series: tuple[patches.Patch, ...]
    config: config.ConfigResult
    kernel: build.KernelBuild | None  # None when stopped after config
    toolchain: Toolchain
    profile: profiles.Profile
    config_request: config.ConfigRequest


class Pipeline:
    def __init__(self, opts: Options, ui: Ui, record: RunRecord, logs: Path):
        self.opts = opts
        self.ui = ui
        self.record = record
        self.logs = logs
        self.work = WorkDir(opts.work)
        self.found_splats: list[tuple[str | None, splats.Splat]] = []

    @contextlib.contextmanager
    def stage(self, name: str):
        self.ui.stage(name)
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.record.stages[name] = round(self.record.stages.get(name, 0.0) + time.monotonic() - t0, 3)
            self.ui.stage_done(name, self.record.stages[name])

    # -- build side --------------------------------------------------------------

    def load_series(self) -> list[patches.Patch]:
        series: list[patches.Patch] = []
        if self.opts.default_patches:
            series += patches.load(DEFAULT_SERIES)
        for spec in self.opts.patches:
            series += patches.load(spec)
        return series

    def config_request(self, tree: source.SourceTree, profile: profiles.Profile, tc: Toolchain,
                       build_dir: Path) -> config.ConfigRequest:
        frag_tree = tree.path / "tools/testing/selftests/iommu/config"
        return config.ConfigRequest(
            tree.path, build_dir, tc, "tinyconfig", profile.fragments, tuple(self.opts.kconfig_add),
            tree_fragments=(frag_tree,) if frag_tree.is_file() else (),
            user_fragments=tuple(self.opts.fragments), base_config=self.opts.base_config)

    def prepare(self, until: str = "build") -> Prepared:
        opts = self.opts
        profile = profiles.load(opts.profile)
        tc = Toolchain(profile.arch, jobs=opts.jobs)
        series = self.load_series()  # before any work: a bad patch input fails fast
        with self.stage("source"):
            tree = source.prepare(source.SourceRequest(opts.kernel_src), self.work,
                                  protect_fn=lambda origin, dest: patches.protected_files(origin.path, dest))
            self.record.kernel.update(version=tree.version, source=tree.origin.description)
            self.ui.info(f"kernel {tree.version} from {tree.origin.description} -> {tree.path}"
                         + (f" ({len(tree.changed)} files updated)" if tree.changed else ""))
        with self.stage("patches"):
            applied = patches.apply_series(tree.origin.path, tree.path, series, set(tree.protected),
                                           self.logs / "patches.log")
            self.record.patches = [p.record() for p in applied.applied]
            for p in applied.applied:
                self.ui.info(f"patch {p.name}: {p.subject}")
        generation = source.bump_generation(tree.path, tree.changed + applied.changed)
        build_dir = self.work.build / tree.origin.key / profile.arch
        with self.stage("config"):
            creq = self.config_request(tree, profile, tc, build_dir)
            cfg = config.configure(creq, self.logs / "config.log")
            for line in cfg.overrides:
                self.ui.info(f"config: {line}")
            self.record.kernel["config_sha256"] = cfg.sha256
        if until == "config":
            return Prepared(tree, tuple(series), cfg, None, tc, profile, creq)
        with self.stage("build"):
            kb = build.build(build.BuildRequest(tree.path, build_dir, tc, cfg.sha256, generation),
                             self.logs / "build.log")
            self.record.kernel.update(build_id=kb.build_id, rebuilt=kb.rebuilt, arch=tc.arch,
                                      toolchain=tc.cc + (" (ccache)" if tc.ccache else ""))
            self.ui.info(("built" if kb.rebuilt else "up to date:") + f" {kb.image} (build-id {kb.build_id[:16]})")
        return Prepared(tree, tuple(series), cfg, kb, tc, profile, creq)

    # -- guest side ---------------------------------------------------------------

    def make_image(self, prep: Prepared) -> image.BaseImage:
        with self.stage("image"):
            recipe = image.Recipe.load(prep.profile.recipe)
            req = image.ImageRequest(recipe, prep.profile.arch, prep.toolchain.elf_machine, prep.kernel.selftests)
            base = image.build_base(req, self.work.images, self.work.cache, self.logs / "image.log")
            self.record.image = {"recipe": recipe.name, "file": base.path.name, "rebuilt": base.rebuilt,
                                 "packages": base.packages}
            self.ui.info(("built" if base.rebuilt else "cached:") + f" {base.path.name}")
            return base

    def accel(self, prep: Prepared) -> tuple[str, str]:
        if self.opts.accel in ("tcg", "kvm"):
            return self.opts.accel, "requested"
        if not prep.toolchain.native:
            return "tcg", f"a {prep.profile.arch} guest on this host needs emulation"
        return qemu.probe_kvm(prep.profile.qemu.binary, prep.kernel.image, self.work.cache)

    @contextlib.contextmanager
    def booted(self, prep: Prepared, base: image.BaseImage, results_dir: Path):
        """A running VM with SSH up, as a :class:`Session`; torn down on exit,
        whatever happens (and so is every VM a reboot started)."""
        vm_dir = self.work.root / "vm" / results_dir.name
        vm_dir.mkdir(parents=True, exist_ok=True)
        sock_dir = Path(tempfile.mkdtemp(prefix="iommufd-harness-"))
        vms: list[qemu.QemuVM] = []
        try:
            with self.stage("boot"):
                keys = image.make_keys(vm_dir)
                initrd = image.run_image(base, keys, vm_dir)
                accel, why = self.accel(prep)
                self.record.qemu.update(version=qemu.qemu_version(prep.profile.qemu.binary), accel=accel,
                                        accel_reason=why, profile=prep.profile.name)
                self.ui.info(f"booting {prep.profile.name} ({prep.profile.description}) with {accel}: {why}")

                def boot() -> QemuTarget:
                    n = len(vms)
                    req = qemu.BootRequest(prep.profile, prep.kernel.image, initrd, results_dir, accel,
                                           self.opts.boot_timeout, self.opts.extra_cmdline, qmp_dir=sock_dir,
                                           console_name="console.log" if n == 0 else f"console.{n}.log")
                    vm = qemu.QemuVM(req)
                    vms.append(vm)
                    vm.start()
                    self.record.qemu["cmdline"] = vm.argv
                    client = SshClient("127.0.0.1", vm.ssh_port, "root", keys.client_private, keys.host_public)
                    vm.wait_for_sshd(client.connect)
                    (vm_dir / "known_hosts").write_text(f"[127.0.0.1]:{vm.ssh_port} {keys.host_public}\n")
                    target = QemuTarget(vm, client)
                    info = runner.verify_guest(target, prep.kernel.build_id, prep.profile.iommu,
                                               prep.profile.hugepages)
                    self.record.guest.update(kernel_release=info.kernel_release, build_id=info.build_id,
                                             hugepages=info.hugepages, iommus=list(info.iommus), boots=n + 1)
                    self.ui.info(f"guest up: {info.kernel_release}, IOMMUs: {', '.join(info.iommus) or 'none'}, "
                                 f"{info.hugepages} huge pages")
                    return target

                session = Session(boot(), "", boot)
                session.ssh_cmd = self.ssh_command(vm_dir, vms[-1].ssh_port)
            yield session
            client = session.target.client
            self.record.guest.update(ssh_connections=client.connections, ssh_commands=client.commands)
        finally:
            for vm in vms:
                vm.stop()
            shutil.rmtree(sock_dir, ignore_errors=True)
            (vm_dir / "initrd.cpio").unlink(missing_ok=True)

    @contextlib.contextmanager
    def on_board(self, prep: Prepared, spec: "board.BoardSpec", results_dir: Path):
        """A real board over SSH as a :class:`Session` (it is never rebooted
        by the harness); the files the harness copied there are removed on exit."""
        target = board.BoardTarget(spec, results_dir, name=prep.profile.name)
        recipe = prep.profile.recipe
        files = {f"selftests/{n}": (p, 0o755) for n, p in prep.kernel.selftests.items()}
        files["run-tests"] = (recipe / "run-tests", 0o755)
        files["killtree"] = (recipe / "killtree", 0o755)
        try:
            with self.stage("boot"):
                self.ui.info(f"board {spec.user}@{spec.host}:{spec.port} (host key pinned from {spec.known_hosts})")
                target.setup(files)
                machine = target.run(["uname", "-m"], 30).text.strip()
                want = {"x86_64": "x86_64", "arm64": "aarch64"}[prep.toolchain.arch]
                if machine != want:
                    raise HarnessError(f"the board is {machine or 'unknown'}, profile {prep.profile.name} builds "
                                       f"for {prep.toolchain.arch}", "pick a profile of the board's architecture")
                target.run(["sh", "-c", f"[ $(cat /proc/sys/vm/nr_hugepages) -ge {prep.profile.hugepages} ] || "
                            f"echo {prep.profile.hugepages} > /proc/sys/vm/nr_hugepages"], 60)
                info = runner.verify_guest(target, None, prep.profile.iommu, prep.profile.hugepages)
                self.record.guest = {"kind": "board", "host": spec.host, "kernel_release": info.kernel_release,
                                     "build_id": info.build_id, "hugepages": info.hugepages,
                                     "iommus": list(info.iommus), "built_kernel_booted":
                                     info.build_id == prep.kernel.build_id}
                self.ui.info(f"board up: {info.kernel_release}, IOMMUs: {', '.join(info.iommus) or 'none'}, "
                             f"{info.hugepages} huge pages"
                             + ("" if info.build_id == prep.kernel.build_id else
                                " (not the kernel built here: its own build-id is recorded)"))

            def no_reboot():
                raise HarnessError("the harness does not reboot real boards", "reboot it from the lab, then rerun")

            yield Session(target, f"ssh -p {spec.port} {spec.user}@{spec.host}", no_reboot)
        finally:
            target.close()

    @staticmethod
    def ssh_command(vm_dir: Path, port: int) -> str:
        return (f"ssh -i {vm_dir / 'id_ed25519'} -p {port} -o UserKnownHostsFile={vm_dir / 'known_hosts'} "
                f"-o StrictHostKeyChecking=yes root@127.0.0.1")

    # -- tests ---------------------------------------------------------------------

    def run_tests(self, session: Session, suite: suites.Suite, sink: ResultsDir) -> None:
        with self.stage("run"):
            target = session.target
            available = {r.binary: runner.list_tests(target, r.binary) for r in suite.runs}
            selection = suites.select(suite, available, self.opts.tests)
            for miss in selection.unmatched:
                self.ui.warn(f"suite {suite.name}: no test matches {miss}")
            total = selection.count
            self.ui.info(f"running {total} tests of suite {suite.name}")
            limit = self.opts.per_test_timeout or suite.per_test_timeout

            def on_result(rec: TestRecord) -> None:
                self.record.tests.append(rec)
                sink.add(rec)
                self.ui.test_result(rec, len(self.record.tests), total)

            todo = selection
            reboots = 0
            while True:
                r = runner.Runner(target, limit, on_result, on_tap=sink.save_tap,
                                  defer_unrun=self.opts.continue_after_crash and reboots < MAX_REBOOTS)
                try:
                    r.run(todo)
                finally:
                    self.found_splats += r.splats
                    self.record.kernel["splats"] = [
                        {"test": name, "kind": s.kind, "title": s.title, "signature": s.signature,
                         "fatal": s.fatal} for name, s in self.found_splats]
                for problem in r.tap_errors:
                    self.record.errors.append(f"inconsistent TAP from the guest: {problem}")
                if not r.unrun:
                    break
                # --continue-after-crash: boot again and run what is left
                reboots += 1
                self.ui.warn(f"{r.dead}: rebooting ({reboots} of {MAX_REBOOTS}) for {len(r.unrun)} test(s) left")
                todo = suites.Selection({b: tuple(n for bb, n in r.unrun if bb == b)
                                         for b in dict.fromkeys(b for b, _ in r.unrun)}, ())
                try:
                    target = session.target = session.reboot()
                except HarnessError as e:
                    self.record.errors.append(f"reboot after a crash failed: {e.message}")
                    for b, n in r.unrun:
                        on_result(TestRecord(n, "notrun", reason=f"not run: {r.dead}; the reboot failed", binary=b))
                    r.dead = r.dead or "reboot failed"
                    break
            if r.dead:
                self.record.errors.append(f"the target died during the run: {r.dead}")
            elif self.opts.rerun_failed:
                self.rerun_failed(target, selection, limit)
            for name, s in self.found_splats:
                where = f"during {name}" if name else "outside any test"
                self.ui.warn(f"kernel {s.kind} {where}: {s.title}")

    def rerun_failed(self, target, selection: suites.Selection, limit: float) -> None:
        """Run failed and timed-out tests again, up to --rerun-failed times: one
        that passes on a rerun is recorded as flaky (listed, never silently
        green); a kernel crash is never rerun away."""
        reruns: dict[str, list[TestRecord]] = {}
        for attempt in range(1, self.opts.rerun_failed + 1):
            todo = {t.name for t in self.record.tests if t.status in ("fail", "timeout")
                    and not any(r.status == "pass" for r in reruns.get(t.name, []))}
            if not todo:
                break
            self.ui.info(f"rerun {attempt} of {self.opts.rerun_failed}: {len(todo)} test(s)")
            again = suites.Selection({b: tuple(n for n in names if n in todo)
                                      for b, names in selection.tests.items() if todo & set(names)}, ())
            rr = runner.Runner(target, limit, lambda rec: reruns.setdefault(rec.name, []).append(rec))
            rr.run(again)
            if rr.dead:
                self.record.errors.append(f"the target died while rerunning failed tests: {rr.dead}")
                break
        for i, t in enumerate(self.record.tests):
            if t.name in reruns:
                self.record.tests[i] = baseline.mark_flaky(t, reruns[t.name])
                if baseline.is_flaky(self.record.tests[i]):
                    self.ui.warn(f"flaky: {t.name} ({self.record.tests[i].reason})")

    def decode_splats(self, prep: Prepared, limit: int = 5) -> None:
        """Symbolised call traces (scripts/decode_stacktrace.sh + vmlinux) for
        the first reports that were attributed to tests, into their logs."""
        by_name = {t.name: t for t in self.record.tests}
        for name, s in [(n, s) for n, s in self.found_splats if n][:limit]:
            text = splats.decode(s, prep.tree.path, prep.kernel.vmlinux, self.logs / "decode.log")
            if text and name in by_name:
                rec = by_name[name]
                rec.log = clean(rec.log + f"\n--- decoded {s.kind} ---\n{text}")


def new_record(opts: Options) -> RunRecord:
    return RunRecord(
        suite=opts.suite, profile=opts.profile,
        started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        harness={"version": __version__, "host": platform.node(), "python": platform.python_version(),
                 "argv": list(map(str, os.sys.argv))},
    )


def results_dir_for(opts: Options, work: WorkDir) -> Path:
    if opts.results is not None:
        path = opts.results.expanduser().resolve()
        if (path / "results.json").exists() or (path / "progress.jsonl").exists():
            raise HarnessError(f"results dir {path} already holds another run",
                               "pass an empty or new directory with --results")
        return path
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return work.results / f"{stamp}-{opts.profile}-{opts.suite}-{secrets.token_hex(2)}"
