"""boot = "oneshot": the trial kernel boots once through the board's
U-Boot (a hook in its environment runs the harness's script, which deletes
itself before it boots the trial kernel), so every later boot, power
cycles included, is the installed kernel."""

from __future__ import annotations

import shlex

from harness.lab.deploy import (BOOT_FS, BOOT_MOUNT, HOOK_RUN, ONESHOT_SCRIPT, DeployError, check_oneshot,
                                compile_script, oneshot_script)
from harness.lab.kexec import KexecLifecycle
from harness.targets.ssh import SshClient, SshLost


class OneshotLifecycle(KexecLifecycle):
    """``boot = "oneshot"``: the trial kernel, its dtb and a one-shot U-Boot
    script go to the board's boot partition; a reboot runs the script
    through the hook in the board's U-Boot environment (README: Real
    boards), and the script deletes itself before it boots the trial kernel.
    The board's own boot files (boot.ini, boot.scr, extlinux.conf) and
    defaults are never touched: every boot after that one, power cycles
    included, is the installed kernel."""

    method = "oneshot"
    starting = "reboot through U-Boot into the trial kernel, once"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.script = BOOT_MOUNT + ONESHOT_SCRIPT
        self.run_id = self.remote_dir.rsplit("/", 1)[-1]

    def _on_partition(self, path: str) -> str | None:
        """``path`` on the board as U-Boot sees it on the /boot partition."""
        if path.startswith(BOOT_MOUNT + "/"):
            return path[len(BOOT_MOUNT):]
        return None

    def _stage(self, c: SshClient, cmdline: str) -> None:
        entry = self.entry
        check_oneshot(entry, c.run(["sh", "-c", BOOT_FS], 30).text.strip())
        directory = self._on_partition(self.remote_dir)
        self._put(c, f"{self.remote_dir}/{self.trial.image.name}", self.trial.image)
        dtb = None
        if self.trial.dtb is not None:
            self._put(c, f"{self.remote_dir}/{self.trial.dtb.name}", self.trial.dtb)
            dtb = self.trial.dtb.name
        initrd = None
        if entry.initrd:
            initrd = self._on_partition(entry.initrd)
            if initrd is None:  # elsewhere on the board: U-Boot cannot read it there
                res = c.run(["cp", entry.initrd, f"{self.remote_dir}/initrd"], 300)
                if res.exit_status != 0:
                    raise DeployError(f"cannot copy the initrd {entry.initrd} to {self.remote_dir} on "
                                      f"{entry.name}: {res.err_text.strip()}")
                initrd = f"{directory}/initrd"
        text = oneshot_script(self.run_id, directory, self.trial.image.name, dtb, initrd, cmdline)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs" / "oneshot.cmd").write_text(text)
        c.put(self.script, compile_script(text), 0o644, timeout=120)
        res = c.run(["sync"], 120)
        if res.exit_status != 0:
            raise DeployError(f"sync failed on {entry.name}: {res.err_text.strip()}")

    def _start(self, c: SshClient) -> None:
        self._detach(c, self.entry.reboot)

    def _script_left(self) -> bool | None:
        c = self._client()
        try:
            c.connect()
            return c.run(["test", "-e", self.script], 30).exit_status == 0
        except SshLost:
            return None
        finally:
            c.close()

    def _why_not_booted(self) -> str:
        if self._script_left():
            return (f"U-Boot did not run the one-shot script ({self.script} is still there): the board's U-Boot "
                    f"environment lacks the hook ('{HOOK_RUN}' in bootcmd, README: Real boards)")
        return "U-Boot ran the one-shot script, but the trial kernel did not boot (a panic, and the board rebooted?)"

    def _trial_up(self) -> None:
        left = self._script_left()
        self.machine["deploy"]["script_consumed"] = left is False
        if left:
            raise DeployError(f"the trial kernel runs on {self.entry.name} but the one-shot script {self.script} "
                              "is still there: the next boot would boot the trial kernel again",
                              "check the board's U-Boot for fatrm (CONFIG_FAT_WRITE)")

    def _before_reboot(self, c: SshClient) -> None:
        c.run(["sh", "-c", f"rm -f {shlex.quote(self.script)}; sync"], 60)

    def _leftovers(self) -> list[str]:
        return [self.remote_dir, self.script]
