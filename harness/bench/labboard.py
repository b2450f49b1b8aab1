"""The QEMU lab board's figures: run --lab (kexec, oneshot, a hanging
trial kernel) against the same steps by hand over SSH."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from harness import proc
from harness.errors import HarnessError
from harness.workdir import WorkDir
from harness.bench import common
from harness.bench.common import Figure, harness_argv, prepare, results_of, timed


def lab_board_runs(work: Path, suite: str, repeat: int, tmp: Path) -> list[Figure]:
    """The QEMU lab board: the harness's deploy, boot, verify and return
    against the same steps by hand, and a hanging trial kernel's rollback
    against its budget."""
    from harness import lab
    from harness.lab import deploy, qemuboard

    dest = tmp / "qemu-board"
    qemuboard.create(dest, WorkDir(work))
    board = proc.spawn(harness_argv("qemu-board", "start", dest), common.LOG)
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
