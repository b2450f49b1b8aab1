"""Boards as the pipeline sees them: a :class:`~harness.targets.place.Place`.

    --board USER@HOST[:PORT]             SshBoard: the board keeps its kernel
    --lab LAB --board NAME               LabBoard: locked for the whole run,
                                         probed before the build; its trial
                                         kernel (kexec, oneshot) is built for
                                         it, or it keeps its own (installed)
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from harness import profiles
from harness.errors import InputError
from harness.lab import deploy, labfile, labgrid
from harness.lab.board import BoardLifecycle, BoardSpec
from harness.lab.kexec import KexecLifecycle
from harness.lab.oneshot import OneshotLifecycle
from harness.lab.state import BoardLock, LabState, holder_name
from harness.reports.results import RunRecord
from harness.targets.lifecycle import Lifecycle
from harness.targets.place import KernelFor, Place, TargetRequest

RECIPE_SCRIPTS = ("run-tests", "killtree", "hangcheck", "leakcheck")  # from the profile's recipe, on the board


def files_for_board(req: TargetRequest) -> dict[str, tuple[Path, int]]:
    """The selftests built here and the recipe's helper scripts, copied to
    the board at boot (a VM finds them in its image)."""
    files = {f"selftests/{n}": (p, 0o755) for n, p in req.kernel.selftests.items()}
    files.update({n: (req.profile.recipe / n, 0o755) for n in RECIPE_SCRIPTS})
    return files


def installed(spec: BoardSpec, req: TargetRequest) -> BoardLifecycle:
    """A board that keeps its own kernel, off; the selftests and helper
    scripts built here are copied there at boot."""
    return BoardLifecycle(spec, files_for_board(req), req.profile.arch, req.results_dir,
                          dataclasses.replace(req.expect, build_id=None), req.kernel.build_id,
                          name=req.profile.name, guest=req.record.guest, say=req.say)


class SshBoard(Place):
    """--board USER@HOST[:PORT] without a lab: checked before anything is built."""

    def __init__(self, board: str, key: Path, known_hosts: Path):
        self.spec = BoardSpec.parse(board, key, known_hosts)

    def lifecycle(self, req: TargetRequest) -> Lifecycle:
        return installed(self.spec, req)


class LabBoard(Place):
    """--lab LAB --board NAME."""

    def __init__(self, lab_path: Path, name: str, lock_wait: float, record: RunRecord, logs: Path, say=None):
        self.lab = labfile.load(lab_path)
        self.entry = self.lab.board(name)
        self.lock_wait = lock_wait
        self.record = record
        self.logs = logs
        self.say = say or (lambda msg: None)
        self.facts: dict | None = None  # what the board told before the build
        self.lock = None  # BoardLock or labgrid.PlaceLock while the run holds the board

    def trial_config(self) -> str | None:
        """How the trial kernel is configured (None: the board keeps its own)."""
        return None if self.entry.boot == "installed" else self.entry.kernel_config

    def kernel(self, profile: profiles.Profile, tree: Path, srcarch: str) -> KernelFor:
        kcfg = self.trial_config()
        if kcfg is None:
            return KernelFor()  # the board keeps its own kernel
        out = KernelFor(make_targets=self._dtb(tree, srcarch))
        if kcfg in ("running", "defconfig"):
            # the board's own kernel (or the arch's defconfig) with what the
            # board has loaded built in, plus the board fragments; a config
            # of its own: a build dir of its own
            out = dataclasses.replace(
                out, base="defconfig", fragments=profile.board_fragments, lsmod=self.facts["lsmod_file"],
                base_config=self.facts["config_file"] if kcfg == "running" else None,
                flavour=f"+board-{self.entry.name}")
        return out

    def _dtb(self, tree: Path, srcarch: str) -> tuple[str, ...]:
        """The board's dtb as a make target, checked against the tree."""
        dtb = self.entry.dtb
        if not dtb or dtb == "firmware":
            return ()
        dts = tree / "arch" / srcarch / "boot/dts" / (dtb.removesuffix(".dtb") + ".dts")
        if not dtb.endswith(".dtb") or not dts.is_file():
            raise InputError(f"board {self.entry.name}: dtb {dtb!r} is not in this tree (no "
                             f"arch/{srcarch}/boot/dts/{dts.name} under {dts.parent.relative_to(tree)})",
                             f"fix 'dtb' in {self.lab.path}: a path under arch/{srcarch}/boot/dts ending in .dtb, "
                             "or \"firmware\" for the board's own")
        return (dtb,)

    @contextlib.contextmanager
    def held(self, what: str):
        """The board locked for the whole run (and checked: not quarantined,
        reachable with its pinned key, what it runs)."""
        place = self.lab.place(self.entry)
        if place is not None:
            lock = labgrid.PlaceLock(place, self.entry.name, wait=self.lock_wait, say=self.say)
        else:
            lock = BoardLock(LabState(self.lab.state), self.entry.name, what, wait=self.lock_wait, say=self.say)
        with lock:
            self.lock = lock
            try:
                if place is not None:
                    followed = None
                    if self.entry.console is None:  # the lab file's own console command comes first
                        followed = lock.follow_console(self.logs / "labgrid-console.log")
                    self.entry = place.resolve(self.entry, lock.console.log if lock.console else None)
                    self.say(f"board {self.entry.name}: labgrid place {place.name} acquired "
                             f"({self.entry.user}@{self.entry.host}:{self.entry.port})"
                             + (f", its console followed (NetworkSerialPort {followed.get('host')}:"
                                f"{followed.get('port')})" if followed else ""))
                else:
                    self.say(f"board {self.entry.name}: locked ({holder_name()})")
                self.record.guest["board"] = self.entry.name  # the lab's name for it (a merged matrix's cell)
                self.facts = deploy.probe(self.entry, fetch_config=self.trial_config() in ("running", "defconfig"),
                                          into=self.logs)
                self.say(f"board {self.entry.name}: runs {self.facts['release']} ({self.facts['machine']}), "
                         f"kexec {'yes' if self.facts['kexec'] else 'no'}")
                yield
            finally:
                self.lock = None  # released on the way out: nothing to check any more

    def check(self) -> None:
        """Raises state.LockLost if the run no longer holds its board."""
        if self.lock is not None:
            self.lock.check()

    def lifecycle(self, req: TargetRequest) -> Lifecycle:
        if self.trial_config() is None:
            return installed(deploy.spec_of(self.entry), req)
        dtb = req.record.kernel.get("dtb")
        trial = deploy.TrialKernel(req.kernel.image, req.kernel.vmlinux, req.kernel.build_id,
                                   req.kernel.image.parents[0] / "dts" / dtb if dtb else None)
        kind = OneshotLifecycle if self.entry.boot == "oneshot" else KexecLifecycle
        return kind(self.entry, files_for_board(req), req.profile.arch, req.results_dir, req.expect, trial,
                    self.lab.place(self.entry) or LabState(self.lab.state), req.results_dir.name,
                    extra_cmdline=req.extra_cmdline, lab_path=self.lab.path, name=req.profile.name,
                    guest=req.record.guest, machine=req.record.board, say=req.say)


def for_options(board: str, lab: Path | None, key: Path, known_hosts: Path, lock_wait: float,
                record: RunRecord, logs: Path, say=None) -> Place:
    """The place --board (and --lab) name, checked before anything is built."""
    if lab is not None:
        return LabBoard(lab, board, lock_wait, record, logs, say)
    return SshBoard(board, key, known_hosts)
