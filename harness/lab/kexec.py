"""``boot = "kexec"``: the trial kernel built here is copied to the board,
loaded with the board's dtb and command line and jumped into; teardown
reboots into the installed kernel.  The steps, and what "deploy failed"
and quarantine mean, are :mod:`harness.lab.deploy`'s."""

from __future__ import annotations

import gzip
import shlex
import time
from pathlib import Path

from harness import proc
from harness.errors import HarnessError
from harness.lab.board import BoardEntry, BoardLifecycle, BoardTarget, pinned_host_key
from harness.lab.deploy import (PANIC_END, PANIC_REBOOT, REMOTE_ROOT, Booted, DeployError, TrialKernel, client,
                                first_panic, read_booted, spec_of, trial_cmdline, wait_booted)
from harness.targets.ssh import SshClient, SshLost
from harness.targets.verify import Expect, GuestInfo


class KexecLifecycle(BoardLifecycle):
    """``boot = "kexec"``: the trial kernel is loaded with the board's dtb
    and command line and jumped into; teardown reboots into the installed
    kernel."""

    kind = "board"
    CONSOLE_TIMEOUT = 30.0  # the lab file's console command: what it printed by then
    POWER_TIMEOUT = 120.0  # the lab file's power_cycle command

    def __init__(self, entry: BoardEntry, files, arch: str, run_dir: Path, expect: Expect, trial: TrialKernel,
                 state, run_id: str, extra_cmdline: str = "", lab_path: Path | None = None,
                 name: str = "board", **kw):
        super().__init__(spec_of(entry), files, arch, run_dir, expect, trial.build_id, name=name, **kw)
        self.entry = entry
        self.trial = trial
        self.lab_state = state  # LabState, or a labgrid Place: quarantine(board, reason)
        self.remote_dir = f"{REMOTE_ROOT}/{run_id}"
        self.extra_cmdline = extra_cmdline
        self.lab_path = lab_path or state.root
        pinned_host_key(self.spec.known_hosts, self.spec.host, self.spec.port)  # refused here, not mid-run
        self.installed: Booted | None = None
        self.trial_boot: Booted | None = None
        self.copied = False
        self.trial_started = False
        self._console_before = ""
        self._gunzip: bool | None = None

    # -- SSH ------------------------------------------------------------------------------

    def _client(self) -> SshClient:
        return client(self.entry, connect_timeout=5.0)

    def _wait_booted(self, not_boot_id: str, deadline: float, watch_panic: bool = False) -> Booted | None:
        """``wait_booted``; with ``watch_panic`` and a console, a kernel
        panic there that does not reboot ("---[ end Kernel panic" without
        "Rebooting in") ends the wait at once: that kernel hangs."""
        t_wait = time.monotonic()
        told = False

        def hangs() -> bool:
            nonlocal told
            if not (watch_panic and self.entry.console) or told:
                return False
            text = self._console_new()
            panic = first_panic(text)
            if panic is None:
                return False
            tail = text[panic.start:]
            if PANIC_REBOOT in tail:
                self.say(f"board {self.entry.name}: the trial kernel panicked "
                         f"({time.monotonic() - t_wait:.0f} s in) and reboots by itself")
                told = True
            elif PANIC_END in tail:
                self.say(f"board {self.entry.name}: the trial kernel panicked "
                         f"({time.monotonic() - t_wait:.0f} s in) and stays there")
                return True
            return False

        return wait_booted(self.entry, not_boot_id, deadline, give_up=hangs)

    def _put(self, c: SshClient, remote: str, local: Path) -> None:
        """Copy a file to the board, gzip-compressed when the board can
        unpack it (a kernel image is a third of its size, and SSH is slow on
        small boards)."""
        if self._gunzip is None:
            self._gunzip = c.run(["sh", "-c", "command -v gunzip"], 30).exit_status == 0
        data = local.read_bytes()
        if self._gunzip:
            c.put(remote, gzip.compress(data, 6), 0o644, timeout=600, gzipped=True)
        else:
            c.put(remote, data, 0o644, timeout=600)

    def _detach(self, c: SshClient, command: str) -> None:
        """Start ``command`` on the board so that it outlives this SSH session."""
        c.run(["sh", "-c", f"setsid sh -c {shlex.quote('sleep 1; ' + command)} </dev/null >/dev/null 2>&1 &"], 30)

    def _console_text(self) -> str:
        if not self.entry.console:
            return ""
        # the lab file's command, through the one gateway: a console client that hangs is killed
        # with everything it started
        res = proc.run(["sh", "-c", self.entry.console], timeout=self.CONSOLE_TIMEOUT, split_stderr=True)
        return res.output  # what it printed before it was killed too

    def _console_new(self) -> str:
        """What the console printed since the trial kernel was started."""
        text = self._console_text()
        before = self._console_before
        if before and text.startswith(before):
            return text[len(before):]
        if before.strip():
            last = before.strip().splitlines()[-1]
            at = text.rfind(last)
            return text[at + len(last):] if at >= 0 else text
        return text

    def _console(self, lines: int = 40) -> str:
        """The board's serial console since the trial kernel was started
        (all of it in logs/board-console.log), for an error message: around
        the first panic if there is one, else its end."""
        text = self._console_new()
        if not text.strip():
            return ""
        log = self.run_dir / "logs" / "board-console.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text)
        rows = text.splitlines()
        found = first_panic(text)
        panic = text[:found.start].count("\n") if found is not None else None
        shown = rows[max(0, panic - lines + 10):panic + 10] if panic is not None else rows[-lines:]
        return (f"\n--- the board's console since the trial kernel was started ({len(shown)} of {len(rows)} lines, all in {log}) ---\n"
                + "\n".join(shown))

    # -- deploy -----------------------------------------------------------------------------

    def _boot(self) -> BoardTarget:
        entry, t0 = self.entry, time.monotonic()
        self.say(f"board {entry.name}: {entry.user}@{entry.host}:{entry.port} (host key pinned from "
                 f"{self.spec.known_hosts}), deploying the kernel built here with kexec")
        c = self._client()
        c.connect()
        try:
            self.installed = read_booted(c)
            if self.installed.build_id == self.trial.build_id:
                raise DeployError(f"board {entry.name} already runs the trial kernel (build-id "
                                  f"{self.trial.build_id[:16]}): it is not on its installed kernel",
                                  f"bring it back (reboot or power cycle), then: iommufd-harness lab check "
                                  f"{self.lab_path} {entry.name}")
            cmdline = entry.cmdline if entry.cmdline is not None else \
                c.run(["cat", "/proc/cmdline"], 30).text.strip()
            cmdline = trial_cmdline(cmdline, self.extra_cmdline)
            c.run(["mkdir", "-p", self.remote_dir], 30)
            self.copied = True
            self._stage(c, cmdline)
            self.machine["deploy"] = {"method": self.method, "cmdline": cmdline, "dir": self.remote_dir,
                                      "copy_s": round(time.monotonic() - t0, 1)}
            self._console_before = self._console_text()
            self._start(c)
            self.trial_started = True
        finally:
            c.close()
        self.say(f"board {entry.name}: {self.starting} (waiting up to {entry.boot_timeout:.0f} s for SSH)")
        t_kexec = time.monotonic()
        booted = self._wait_booted(self.installed.boot_id, t_kexec + entry.boot_timeout, watch_panic=True)
        self.machine["deploy"]["wait_s"] = round(time.monotonic() - t_kexec, 1)
        if booted is None:
            raise DeployError(f"deploy failed: the trial kernel did not answer over SSH on {entry.name} "
                              f"({time.monotonic() - t0:.0f} s after the deploy started; boot_timeout "
                              f"{entry.boot_timeout:.0f} s)" + self._console(),
                              "its console says why; the board is brought back to its installed kernel")
        if booted.build_id != self.trial.build_id:
            raise DeployError(f"deploy failed: {entry.name} came back running {booted.release} (build-id "
                              f"{(booted.build_id or 'unknown')[:16]}), not the trial kernel "
                              f"{self.trial.build_id[:16]}: {self._why_not_booted()}" + self._console(),
                              "its console says why; the board is on its installed kernel again")
        self.trial_boot = booted
        self._trial_up()
        self.machine["deploy"]["boot_s"] = round(time.monotonic() - t0, 1)
        self.say(f"board {entry.name}: trial kernel {booted.release} up (build-id {booted.build_id[:16]}) "
                 f"in {time.monotonic() - t0:.0f} s")
        return self._setup_target()

    method = "kexec"
    starting = "kexec into the trial kernel"

    def _stage(self, c: SshClient, cmdline: str) -> None:
        """Put the trial kernel on the board and make it the next kernel."""
        image = f"{self.remote_dir}/{self.trial.image.name}"
        self._put(c, image, self.trial.image)
        argv = ["kexec", "-l", image, f"--append={cmdline}"]
        if self.trial.dtb is not None:
            dtb = f"{self.remote_dir}/{self.trial.dtb.name}"
            self._put(c, dtb, self.trial.dtb)
            argv.append(f"--dtb={dtb}")
        if self.entry.initrd:
            argv.append(f"--initrd={self.entry.initrd}")
        res = c.run(argv, 120)
        if res.exit_status != 0:
            raise DeployError(f"kexec could not load the trial kernel on {self.entry.name}: "
                              f"{(res.err_text or res.text).strip()[-800:]}", "see the board's kexec-tools")

    def _start(self, c: SshClient) -> None:
        self._detach(c, "kexec -e")

    def _why_not_booted(self) -> str:
        return "the trial kernel did not boot (a panic, and the board rebooted?)"

    def _trial_up(self) -> None:
        pass

    def _before_reboot(self, c: SshClient) -> None:
        pass

    def _leftovers(self) -> list[str]:
        return [self.remote_dir]

    def _setup_target(self) -> BoardTarget:
        """The trial kernel as a target: booted for this run, so its whole
        kernel log is the run's, reports printed while it booted included."""
        self._board = target = BoardTarget(self.spec, self.run_dir, name=self.name, from_boot=True)
        target.setup(self.files)
        if target.first_seq:
            self.say(f"board {self.entry.name}: warning: the trial kernel's log starts at record "
                     f"{target.first_seq}, not 0: the records it printed first were overwritten in its ring "
                     "buffer before the harness read them, so a report among them is not seen "
                     "(a larger log_buf_len= on the board's command line keeps them)")
        want = self.expect.hugepages
        target.run(["sh", "-c", f"[ $(cat /proc/sys/vm/nr_hugepages) -ge {want} ] || "
                    f"echo {want} > /proc/sys/vm/nr_hugepages"], 60)
        return target

    def _verified(self, info: GuestInfo) -> None:
        installed = {"release": self.installed.release, "build_id": self.installed.build_id}
        self.guest.clear()
        self.guest.update(kind="board", board=self.entry.name, host=self.spec.host, kernel_release=info.kernel_release,
                          build_id=info.build_id, hugepages=info.hugepages, iommus=list(info.iommus), cpus=info.cpus,
                          built_kernel_booted=info.build_id == self.trial.build_id, installed=installed,
                          kernel_log_from_seq=self._board.first_seq if self._board else None)
        self.say(f"board up: {info.kernel_release}, IOMMUs: {', '.join(info.iommus) or 'none'}, "
                 f"{info.hugepages} huge pages")

    def _reboot(self) -> BoardTarget:
        """After a crash in the tests: back to the installed kernel, then
        the trial kernel again."""
        if self._board is not None:
            self._board.close()
            self._board = None
        self._return()
        self.trial_started = False
        return self._boot()

    # -- return -----------------------------------------------------------------------------

    def _teardown(self) -> None:
        try:
            if self._board is not None:
                self._board.close()
        except HarnessError:
            pass
        finally:
            self._board = None
        if self.installed is None:
            return  # never reached the board
        self._return()

    def _power_cycle(self) -> bool:
        if not self.entry.power_cycle:
            return False
        self.say(f"board {self.entry.name}: power cycle ({self.entry.power_cycle})")
        res = proc.run(["sh", "-c", self.entry.power_cycle], timeout=self.POWER_TIMEOUT,
                       log=self.run_dir / "logs" / "power-cycle.log")
        return res.returncode == 0 and not res.timed_out

    def _return(self) -> None:
        """Back to the installed kernel, checked by its build-id; the trial
        files removed.  A board that does not come back is quarantined."""
        entry, inst = self.entry, self.installed
        t0 = time.monotonic()
        how = "already there"
        back = None
        if self.trial_started:
            seen = self.trial_boot.boot_id if self.trial_boot else inst.boot_id
            c = self._client()
            try:
                c.connect()
                now = read_booted(c)
                if now.build_id == inst.build_id and now.boot_id != seen:
                    back = now  # the trial kernel died and the board rebooted by itself
                    how = "rebooted by itself"
                else:
                    seen = now.boot_id
                    self._before_reboot(c)
                    self._detach(c, entry.reboot)
                    how = "reboot"
            except SshLost:
                how = "power cycle"  # not answering: the trial kernel hangs
            finally:
                c.close()
            if back is None and how == "reboot":
                back = self._wait_booted(seen, time.monotonic() + entry.boot_timeout)
                if back is None:
                    how = "power cycle"
            if back is None and self._power_cycle():
                back = self._wait_booted(seen, time.monotonic() + entry.boot_timeout)
            elif back is None:
                how = "no power cycle command" if not entry.power_cycle else "power cycle failed"
        else:
            c = self._client()
            try:
                c.connect()
                back = read_booted(c)
            except SshLost:
                back = None
            finally:
                c.close()
        ok = back is not None and back.build_id == inst.build_id
        self.machine["return"] = {"how": how, "ok": ok, "seconds": round(time.monotonic() - t0, 1),
                                  "release": back.release if back else None}
        if not ok:
            why = (f"came back as {back.release} (build-id {(back.build_id or 'unknown')[:16]})" if back else
                   f"did not answer within {entry.boot_timeout:.0f} s ({how})")
            reason = f"did not return to its installed kernel {inst.release}: {why}"
            self.lab_state.quarantine(entry.name, reason)
            raise DeployError(f"board {entry.name} {reason}; it is quarantined" + self._console(),
                              f"bring it back by hand, then: iommufd-harness lab release {self.lab_path} "
                              f"{entry.name}")
        if self.trial_started:
            self.say(f"board {entry.name}: back on its installed kernel {back.release} ({how}, "
                     f"{time.monotonic() - t0:.0f} s)")
        self.trial_started = False
        if self.copied:
            c = self._client()
            try:
                c.connect()
                c.run(["rm", "-rf", *self._leftovers()], 60)
                c.run(["sync"], 60)
                self.copied = False
            except SshLost:
                pass
            finally:
                c.close()
