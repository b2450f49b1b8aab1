"""End to end on a lab board without hardware: the QEMU lab board
(qemu-images/qemu-board-arm64: Debian's U-Boot, Debian's arm64 kernel as
the installed kernel, sshd and kexec-tools, QMP system_reset as its power
cycle, the oneshot hook in its U-Boot environment).  The harness deploys
the arm64 kernel it built, boots it once (kexec, or through U-Boot with
oneshot), proves it runs it, tests, and brings the board back; every case
ends with the board on its installed kernel, nothing of the run left on
it, and no lock held.  The labgrid cases run a real labgrid coordinator
and exporter on loopback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import lab
from harness.lab import deploy, labgrid

from expected import PINNING_BROKEN, listed_tests  # tests/e2e/expected.py

REPO = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("IOMMUFD_HARNESS_WORK", REPO / "work"))

pytestmark = pytest.mark.slow


def harness(*argv: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "harness", *argv], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout)
    sys.stdout.write(res.stdout[-20000:])
    sys.stderr.write(res.stderr[-20000:])
    return res


class Board:
    def __init__(self, dest: Path, proc: subprocess.Popen):
        self.dest, self.proc = dest, proc
        self.lab_text = (dest / "lab.toml").read_text()
        self.installed: dict = {}

    def lab_file(self, where: Path, **changes: str) -> Path:
        """The board's lab file with some keys changed (TOML values)."""
        lines = []
        for line in self.lab_text.splitlines():
            key = line.split("=", 1)[0].strip()
            if key in changes:
                continue
            lines.append(line)
        lines += [f"{k} = {v}" for k, v in changes.items()]
        where.mkdir(parents=True, exist_ok=True)
        path = where / "lab.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def console_size(self) -> int:
        return (self.dest / "console.log").stat().st_size

    def console_since(self, size: int) -> str:
        with open(self.dest / "console.log", "rb") as f:
            f.seek(size)
            return f.read().decode(errors="replace")

    def entry(self) -> lab.BoardEntry:
        return lab.load(self.dest / "lab.toml").board("qemu-board")

    def facts(self) -> dict:
        return deploy.probe(self.entry())

    def ssh(self, script: str) -> str:
        c = deploy.client(self.entry())
        c.connect()
        try:
            return c.run(["sh", "-c", script], 60).text
        finally:
            c.close()

    def assert_back_home(self, lab_path: Path) -> None:
        """On its installed kernel, nothing of a run left on it, no lock."""
        f = self.facts()
        assert (f["release"], f["build_id"]) == (self.installed["release"], self.installed["build_id"])
        assert self.ssh("ls /boot/iommufd-harness 2>/dev/null").split() == []
        assert lab.LabState(lab.load(lab_path).state).lock_info("qemu-board") is None


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    dest = tmp_path_factory.mktemp("qemu-board")
    res = harness("qemu-board", "create", str(dest), "--work", str(WORK), timeout=900)
    assert res.returncode == 0, res.stderr
    proc = subprocess.Popen([sys.executable, "-m", "harness", "qemu-board", "start", str(dest)], cwd=REPO,
                            start_new_session=True)
    b = Board(dest, proc)
    deadline = time.monotonic() + 300
    while True:
        try:
            f = b.facts()
            break
        except Exception:
            assert time.monotonic() < deadline and proc.poll() is None, \
                "the QEMU board did not come up:\n" + (dest / "console.log").read_text()[-3000:]
            time.sleep(3)
    b.installed = {"release": f["release"], "build_id": f["build_id"]}
    assert f["machine"] == "aarch64" and f["kexec"] and f["build_id"]
    yield b
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)
    pid = (dest / "qemu.pid")
    assert not pid.exists(), "the board's QEMU was left running"


def test_lab_check_reports_the_installed_kernel_and_boot_methods(board):
    res = harness("lab", "check", str(board.dest / "lab.toml"))
    assert res.returncode == 0, res.stdout
    out = res.stdout
    assert "reachable: yes" in out and f"kernel: {board.installed['release']} (aarch64)" in out
    assert board.installed["build_id"] in out
    assert "boot methods: installed, kexec, oneshot" in out and "locked: no" in out and "quarantined: no" in out
    assert "U-Boot boot files: /boot/extlinux/extlinux.conf" in out


def test_an_unknown_or_changed_host_key_is_refused_before_anything_is_built(board, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    other = tmp_path / "other_known_hosts"
    port = board.entry().port
    from harness.stages.image import make_keys
    other.write_text(f"[127.0.0.1]:{port} {make_keys(tmp_path / 'k').host_public}\n")
    for known, words in ((empty, "has no host key"), (other, "does not match the pinned key")):
        path = board.lab_file(tmp_path / f"lab-{known.name}", known_hosts=f'"{known}"')
        t0 = time.monotonic()
        res = harness("run", "--lab", str(path), "--board", "qemu-board", "--work", str(WORK),
                      "--results", str(tmp_path / f"r-{known.name}"), "--suite", "access", timeout=300)
        assert res.returncode == 2
        data = json.loads((tmp_path / f"r-{known.name}" / "results.json").read_text())
        assert words in data["errors"][0] and data["verdict"] == "error"
        assert "build" not in data["stages"] and time.monotonic() - t0 < 60
        board.assert_back_home(path)


def test_a_dtb_the_tree_lacks_is_refused_before_the_build(board, tmp_path):
    path = board.lab_file(tmp_path, dtb='"rockchip/rk3568-odroid-nonexistent.dtb"')
    res = harness("run", "--lab", str(path), "--board", "qemu-board", "--work", str(WORK),
                  "--results", str(tmp_path / "r"), "--suite", "access", timeout=600)
    assert res.returncode == 2
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert "rk3568-odroid-nonexistent.dtb" in data["errors"][0] and "not in this tree" in data["errors"][0]
    assert "build" not in data["stages"] and "boot" not in data["stages"]
    board.assert_back_home(path)


def test_a_board_kernel_from_its_running_config_builds_in_what_it_loaded(board, tmp_path):
    """kernel_config = "running": the board's own config (Debian's, from
    /boot/config-<release>) with every module it has loaded built in, the
    iommufd fragments and a release of its own; configured only (a build of
    Debian's config is long)."""
    path = board.lab_file(tmp_path, kernel_config='"running"')
    res = harness("config", "--lab", str(path), "--board", "qemu-board", "--work", str(WORK),
                  "--show", "VIRTIO_NET", "--show", "VIRTIO_BLK", "--show", "VFAT_FS", "--show", "IOMMUFD_TEST",
                  "--show", "LOCALVERSION", timeout=900)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for line in ("CONFIG_VIRTIO_NET=y", "CONFIG_VIRTIO_BLK=y", "CONFIG_VFAT_FS=y", "CONFIG_IOMMUFD_TEST=y",
                 'CONFIG_LOCALVERSION="-iommufd-harness"'):
        assert line in out, out
    assert "build/arm64+board-qemu-board/.config" in out  # a build dir of its own, not the VM's
    loaded = board.ssh("cut -d' ' -f1 /proc/modules").split()
    assert "virtio_net" in loaded and "vfat" in loaded
    board.assert_back_home(path)


def test_a_board_another_run_holds_is_refused_with_the_holder_named(board, tmp_path):
    path = board.lab_file(tmp_path)
    state = lab.LabState(lab.load(path).state)
    with lab.BoardLock(state, "qemu-board", "someone else's nightly"):
        res = harness("run", "--lab", str(path), "--board", "qemu-board", "--work", str(WORK),
                      "--results", str(tmp_path / "r"), "--suite", "access", "--lock-wait", "2", timeout=300)
        assert res.returncode == 2
        data = json.loads((tmp_path / "r" / "results.json").read_text())
        assert "locked by" in data["errors"][0] and lab.holder_name() in data["errors"][0]
        assert "someone else's nightly" in data["errors"][0]
        assert state.lock_info("qemu-board")["what"] == "someone else's nightly"  # not taken from its holder
    board.assert_back_home(path)


def test_oneshot_happy_path_boots_the_built_kernel_once_through_u_boot(board, tmp_path):
    """U-Boot's hook (in the board's U-Boot environment) runs the harness's
    script, which deletes itself and boots the trial kernel; the return
    reboot is the installed kernel again.  The board's own boot files are
    never touched.  With --coverage, read from the trial kernel's debugfs
    over the board's SSH as from a VM's."""
    own = board.ssh("md5sum /boot/extlinux/extlinux.conf")
    before = board.console_size()
    path = board.lab_file(tmp_path, boot='"oneshot"')
    res = harness("run", "--lab", str(path), "--board", "qemu-board", "--work", str(WORK),
                  "--results", str(tmp_path / "r"), "--suite", "access", "--coverage")
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res.returncode == 0 and data["verdict"] == "pass", data["errors"]
    cov = data["coverage"]
    assert cov["dirs"] == ["drivers/iommu/iommufd"] and 0 < cov["total"]["executed"] < cov["total"]["lines"]
    assert cov["series"] == [] and "<coverage" in (tmp_path / "r" / "coverage" / "cobertura.xml").read_text()
    assert data["guest"]["build_id"] == data["kernel"]["build_id"] and data["guest"]["built_kernel_booted"]
    assert sorted(t["name"] for t in data["tests"]) == sorted(listed_tests("access"))
    assert {t["status"] for t in data["tests"]} == {"pass"}
    deploy_info = data["board"]["deploy"]
    assert deploy_info["method"] == "oneshot" and deploy_info["script_consumed"]
    assert data["board"]["return"] == {**data["board"]["return"], "how": "reboot", "ok": True}
    # U-Boot ran the run's script exactly once; it booted the trial kernel, and
    # the boot after it (the return) found no script and was the board's own
    lines = [x.rstrip("\r") for x in board.console_since(before).splitlines()]
    mark = lines.index(f"{deploy.ONESHOT_MARK} r")  # the run id is the results directory's name
    assert lines.count(f"{deploy.ONESHOT_MARK} r") == 1
    versions = [x.split("Linux version ", 1)[1].split()[0] for x in lines[mark:] if "Linux version " in x]
    assert versions == [data["kernel"]["version"], board.installed["release"]]
    assert "Failed to load '/iommufd-harness/oneshot.scr'" in lines[mark + 1:]
    assert board.ssh("md5sum /boot/extlinux/extlinux.conf") == own
    board.assert_back_home(path)


def test_a_trial_kernel_that_warns_at_boot_fails_the_run_as_kernel_boot(board, tmp_path):
    """Every test passes, but the trial kernel WARNed while it booted, long
    before the harness connected: its kernel log is the run's from its first
    record, so the run is red and the report is kernel.boot's, as on a VM.
    The test markers are user-space records in console.log, never reports,
    and the trial kernel's command line keeps them from being rate-limited."""
    path = board.lab_file(tmp_path)
    res = harness("run", "--lab", str(path), "--board", "qemu-board", "--work", str(WORK),
                  "--results", str(tmp_path / "r"), "--suite", "access",
                  "--patches", str(REPO / "tests" / "fixtures" / "kernel-patches" / "warn-at-boot.patch"))
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res.returncode == 1 and data["verdict"] == "fail", data["errors"]
    assert data["guest"]["build_id"] == data["kernel"]["build_id"] and data["guest"]["built_kernel_booted"]
    selftests = [t for t in data["tests"] if t["binary"] != "kernel"]
    assert sorted(t["name"] for t in selftests) == sorted(listed_tests("access"))
    assert {t["status"] for t in selftests} == {"pass"}
    [boot] = [t for t in data["tests"] if t["binary"] == "kernel"]
    assert boot["name"] == "kernel.boot" and boot["status"] == "fail"
    assert boot["reason"].startswith("kernel warning boot: WARNING: CPU:")
    assert "iommufd-harness fault fixture: warning in iommufd_init" in boot["log"]
    assert [(s["test"], s["kind"]) for s in data["kernel"]["splats"]] == [("kernel.boot", "warning")]
    assert data["guest"]["kernel_log_from_seq"] == 0
    assert data["board"]["deploy"]["method"] == "kexec"
    assert data["board"]["deploy"]["cmdline"].endswith(" printk.devkmsg=on")
    console = (tmp_path / "r" / "console.log").read_text()
    assert console.startswith("[    0.000000] ")  # the trial kernel's first record
    for t in selftests:
        assert re.search(rf"^\[ *\d+\.\d{{6}} user\] iommufd-harness: RUN {re.escape(t['name'])}$", console, re.M)
    assert data["board"]["return"] == {**data["board"]["return"], "how": "reboot", "ok": True}
    board.assert_back_home(path)


def test_a_trial_kernel_that_panics_is_deploy_failed_and_rolled_back(board, tmp_path):
    """It panics at boot and the board reboots by itself (panic=5 on the
    board's command line).  Booted through U-Boot once (oneshot), so that
    reboot is the installed kernel: a script that were not consumed would
    boot the panicking kernel again and again."""
    path = board.lab_file(tmp_path, boot='"oneshot"')
    res = harness("run", "--lab", str(path), "--board", "qemu-board", "--work", str(WORK),
                  "--results", str(tmp_path / "r"), "--suite", "access",
                  "--cmdline", "rdinit=/nonexistent init=/nonexistent")
    assert res.returncode == 2
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    err = data["errors"][0]
    assert err.startswith("error [deploy]: deploy failed") and "not the trial kernel" in err
    assert "U-Boot ran the one-shot script" in err
    assert "Kernel panic" in err  # the board's console, from the trial kernel's boot
    assert data["tests"] == [] and data["verdict"] == "error"  # infrastructure, never a test failure
    assert data["board"]["return"]["how"] == "rebooted by itself" and data["board"]["return"]["ok"]
    assert "Kernel panic" in (tmp_path / "r" / "logs" / "board-console.log").read_text()
    board.assert_back_home(path)


def test_a_board_that_does_not_come_back_is_quarantined(board, tmp_path):
    """No power-cycle command and a trial kernel that hangs: the board is
    quarantined, later runs refuse it until 'lab release'; then the test
    brings it back by hand (its power cycle)."""
    path = board.lab_file(tmp_path, power_cycle='"false"', boot_timeout="40")
    res = harness("run", "--lab", str(path), "--board", "qemu-board", "--work", str(WORK),
                  "--results", str(tmp_path / "r"), "--suite", "access",
                  "--cmdline", "panic=0 rdinit=/nonexistent init=/nonexistent")
    assert res.returncode == 2
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert any("quarantined" in e for e in data["errors"]), data["errors"]
    again = harness("run", "--lab", str(path), "--board", "qemu-board", "--work", str(WORK),
                    "--results", str(tmp_path / "r2"), "--suite", "access", timeout=120)
    assert again.returncode == 2 and "quarantined" in json.loads((tmp_path / "r2" / "results.json")
                                                                   .read_text())["errors"][0]
    assert harness("qemu-board", "reset", str(board.dest)).returncode == 0  # by hand
    deadline = time.monotonic() + 180
    while True:
        try:
            if board.facts()["build_id"] == board.installed["build_id"]:
                break
        except Exception:
            pass
        assert time.monotonic() < deadline
        time.sleep(3)
    assert harness("lab", "release", str(path), "qemu-board").returncode == 0
    board.ssh("rm -rf /boot/iommufd-harness")  # the files of the run that could not clean up
    board.assert_back_home(path)


# --- a labgrid place ---------------------------------------------------------------------


class Labgrid:
    """A real labgrid coordinator and exporter on loopback; the exporter
    exports the QEMU board's SSH as a NetworkService, a place matches it,
    and a labgrid environment gives the place its power (labgrid's
    ExternalPowerDriver running the board's power cycle)."""

    def __init__(self, board: Board, where: Path):
        self.procs = []
        try:
            self._setup(board, where)
        except BaseException:
            self.stop()  # no coordinator or exporter left behind by a setup that failed
            raise

    def _setup(self, board: Board, where: Path) -> None:
        from harness.targets.qemu import free_port

        self.where = where
        self.coordinator = f"127.0.0.1:{free_port()}"
        self.bin = Path(sys.executable).parent
        self.start([str(self.bin / "labgrid-coordinator"), "-l", self.coordinator], "coordinator")
        port = int(board.entry().port)
        self.console_port = json.loads((board.dest / "board.json").read_text())["console_port"]
        # its SSH, and its serial console as an exporter's ser2net would serve it (raw TCP)
        (where / "exporter.yaml").write_text(
            f"qemu-board:\n  NetworkService:\n    address: 127.0.0.1\n    port: {port}\n    username: root\n"
            f"  NetworkSerialPort:\n    host: 127.0.0.1\n    port: {self.console_port}\n    speed: 115200\n"
            "    protocol: raw\n")
        self.wait_for(lambda: self.client("places").returncode == 0, "the coordinator")
        self.start([str(self.bin / "labgrid-exporter"), "-c", self.coordinator, "-n", "e2e", "--hostname",
                    "127.0.0.1", str(where / "exporter.yaml")], "exporter")
        self.wait_for(lambda: "e2e/qemu-board/NetworkSerialPort" in self.client("resources").stdout, "the exporter")
        assert self.client("-p", "qemu-board", "create").returncode == 0
        assert self.client("-p", "qemu-board", "add-match", "e2e/qemu-board/*").returncode == 0
        reset = f"{sys.executable} -m harness qemu-board reset {board.dest}"
        (where / "env.yaml").write_text(
            "targets:\n  main:\n    resources:\n      RemotePlace:\n        name: qemu-board\n"
            f"    drivers:\n      ExternalPowerDriver:\n        cmd_on: 'true'\n        cmd_off: 'true'\n"
            f"        cmd_cycle: '{reset}'\n")
        self.lab = where / "lab.toml"
        self.lab.write_text(
            f'[labgrid]\ncoordinator = "{self.coordinator}"\nenv = "{where / "env.yaml"}"\n\n'
            f'[boards.qemu-board]\nlabgrid = "qemu-board"\nkey = "{board.dest / "id_ed25519"}"\n'
            f'known_hosts = "{board.dest / "known_hosts"}"\narch = "arm64"\ndtb = "firmware"\n'
            f'initrd = "{board.entry().initrd}"\nkernel_config = "profile"\nreboot = "reboot -f"\n'
            'boot_timeout = 120\n')

    def start(self, argv: list[str], what: str) -> None:
        log = open(self.where / f"{what}.log", "wb")
        # in its own directory: the coordinator keeps places.yaml and resources.yaml where it runs
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                           cwd=self.where))

    def wait_for(self, ok, what: str) -> None:
        deadline = time.monotonic() + 60
        while not ok():
            assert time.monotonic() < deadline, f"{what} did not come up"
            time.sleep(0.5)

    def client(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, **({"LG_USERNAME": user} if user else {})}
        return subprocess.run([str(self.bin / "labgrid-client"), "-x", self.coordinator, *args],
                              capture_output=True, text=True, timeout=60, env=env)

    def acquired_by(self) -> str:
        out = self.client("-p", "qemu-board", "show").stdout
        return next(x.split(":", 1)[1].strip() for x in out.splitlines() if x.strip().startswith("acquired:"))

    def stop(self) -> None:
        for p in reversed(self.procs):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)


@pytest.fixture(scope="module")
def place(board, tmp_path_factory):
    lg = Labgrid(board, tmp_path_factory.mktemp("labgrid"))
    yield lg
    lg.stop()


def test_labgrid_place_held_by_another_user_is_refused_with_its_holder(board, place, tmp_path):
    assert place.client("-p", "qemu-board", "acquire", user="nightly").returncode == 0
    try:
        t0 = time.monotonic()
        res = harness("run", "--lab", str(place.lab), "--board", "qemu-board", "--work", str(WORK),
                      "--results", str(tmp_path / "r"), "--suite", "access", "--lock-wait", "2", timeout=300)
        assert res.returncode == 2
        err = json.loads((tmp_path / "r" / "results.json").read_text())["errors"][0]
        assert "board qemu-board is locked by" in err and "/nightly" in err and "labgrid" in err
        assert time.monotonic() - t0 < 60
        assert place.acquired_by().endswith("/nightly")  # not taken from its holder
        check = harness("lab", "check", str(place.lab))
        assert "locked: acquired by" in check.stdout and "/nightly" in check.stdout
    finally:
        assert place.client("-p", "qemu-board", "release", user="nightly").returncode == 0


def followers() -> list[str]:
    """The harness's labgrid console followers still running on this machine."""
    res = subprocess.run(["pgrep", "-af", "harness.lab.labgrid console"], capture_output=True, text=True)
    return [x for x in res.stdout.splitlines() if "pgrep" not in x]


def test_a_trial_kernel_that_hangs_on_a_labgrid_place_is_power_cycled_back(board, place, tmp_path):
    """It panics and stays there (panic=0): the board never answers.  The
    place's serial console, read through labgrid's SerialDriver, shows the
    panic and ends the wait at once; the place's power driver brings the
    board back."""
    check = harness("lab", "check", str(place.lab))
    assert check.returncode == 0
    assert f"console: labgrid NetworkSerialPort 127.0.0.1:{place.console_port}" in check.stdout
    t0 = time.monotonic()
    res = harness("run", "--lab", str(place.lab), "--board", "qemu-board", "--work", str(WORK),
                  "--results", str(tmp_path / "r"), "--suite", "access",
                  "--cmdline", "panic=0 rdinit=/nonexistent init=/nonexistent")
    took = time.monotonic() - t0
    assert res.returncode == 2
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    err = data["errors"][0]
    assert "deploy failed: the trial kernel did not answer" in err
    assert f"its console followed (NetworkSerialPort 127.0.0.1:{place.console_port})" in res.stderr
    # the console ends the wait, not the boot timeout, and is in the error
    assert data["board"]["deploy"]["wait_s"] < board.entry().boot_timeout, data["qemu"]
    assert "Kernel panic - not syncing: Requested init /nonexistent failed" in err
    assert "---[ end Kernel panic" in (tmp_path / "r" / "logs" / "board-console.log").read_text()
    assert data["board"]["return"]["how"] == "power cycle" and data["board"]["return"]["ok"]
    assert "power cycle" in res.stderr and took < 600  # said while it happens
    # the whole run's console: the trial kernel's panic, then the installed kernel after the power cycle
    whole = (tmp_path / "r" / "logs" / "labgrid-console.log").read_text(errors="replace")
    panic = whole.index("---[ end Kernel panic")
    assert f"Linux version {board.installed['release']}" in whole[panic:]
    assert place.acquired_by() == "None" and followers() == []  # released, and nothing left reading
    board.assert_back_home(place.lab)


def test_labgrid_place_quarantine(board, place, tmp_path):
    """A quarantine is a tag on the place that later runs see, until lab
    release."""
    the_lab = lab.load(place.lab)
    p = the_lab.place(the_lab.board("qemu-board"))
    with labgrid.PlaceLock(p, "qemu-board"):
        p.quarantine("qemu-board", "a test's quarantine")
    res = harness("run", "--lab", str(place.lab), "--board", "qemu-board", "--work", str(WORK),
                  "--results", str(tmp_path / "r"), "--suite", "access", timeout=300)
    assert res.returncode == 2
    err = json.loads((tmp_path / "r" / "results.json").read_text())["errors"][0]
    assert "quarantined" in err and "a test's quarantine" in err
    assert "iommufd_harness_quarantine=yes" in place.client("-p", "qemu-board", "show").stdout
    rel = harness("lab", "release", str(place.lab), "qemu-board")
    assert rel.returncode == 0 and "labgrid tag iommufd_harness_quarantine removed" in rel.stdout
    assert "iommufd_harness_quarantine" not in place.client("-p", "qemu-board", "show").stdout
    board.assert_back_home(board.dest / "lab.toml")


# --- nightly ------------------------------------------------------------------------------


def test_three_nights_name_the_regression_the_night_it_started_and_its_fix(board, place, tmp_path):
    """A plan with two emulated profiles and the board (its labgrid place),
    three nights: the second night's series breaks the access tests that pin
    more than 8 pages, the third night's fixes them.  The night-two report
    names the regression on every cell and the night it started; night three
    names the fix; report --merge of night two's cells says what the night
    said."""
    root = tmp_path / "nights"
    plan = tmp_path / "plan.toml"
    regression = REPO / "tests" / "fixtures" / "kernel-patches" / "pin-more-than-8-pages-fails.patch"
    cells = {"x86_64-vtd access": "x86_64-vtd-access", "arm64-smmuv3 access": "arm64-smmuv3-access",
             "board qemu-board access": "board-qemu-board-access"}
    said, stderr = {}, {}
    for night, series in (("n1", []), ("n2", [regression]), ("n3", [])):
        plan.write_text(f'root = "{root}"\nsuites = ["access"]\nprofiles = ["x86_64-vtd", "arm64-smmuv3"]\n'
                        f"patches = {json.dumps([str(p) for p in series])}\n"
                        f'\n[[boards]]\nlab = "{place.lab}"\nboard = "qemu-board"\n')
        res = harness("nightly", str(plan), "--night", night, "--work", str(WORK))
        said[night], stderr[night] = res.returncode, res.stderr
        merged = json.loads((root / night / "merged.json").read_text())
        assert sorted(c["name"] for c in merged["cells"]) == sorted(cells), merged
    assert said == {"n1": 0, "n2": 1, "n3": 0}
    broken = {(c, t) for c in cells for t in PINNING_BROKEN}
    h2 = json.loads((root / "n2" / "history.json").read_text())
    assert h2["nights"] == ["n1", "n2"]
    assert {(x["cell"], x["test"]) for x in h2["changes"]["broke"]} == broken
    assert {(t["cell"], t["test"]): t["first_failing"] for t in h2["tests"] if t["first_failing"]} == \
        {k: "n2" for k in broken}
    md = (root / "n2" / "summary.md").read_text()
    assert md.startswith("### iommufd-harness: FAIL\n\n#### Since the previous night (`n1`)")
    # a regression on every cell is one line per test, naming the cells
    [line] = [ln for ln in md.splitlines() if ln.startswith("- **broke**: `iommufd_ioas.no_domain.access_pin` on ")]
    assert " (pass -> fail)" in line and all(c.replace("_", "\\_") in line for c in cells), line
    assert sum(ln.startswith("- **broke**") for ln in md.splitlines()) == len(PINNING_BROKEN)
    h3 = json.loads((root / "n3" / "history.json").read_text())
    assert {(x["cell"], x["test"]) for x in h3["changes"]["fixed"]} == broken and h3["changes"]["broke"] == []
    assert all(t["first_failing"] is None for t in h3["tests"])
    strip = next(t for t in h3["tests"] if t["test"] == "iommufd_ioas.no_domain.access_pin"
                 and t["cell"] == "board qemu-board access")
    assert strip["statuses"] == ["pass", "fail", "pass"] and strip["flaky_rate"] == 1.0
    # the kexec happy path on the labgrid place, night one: acquired for the run (host and port
    # from its NetworkService) and released; the kernel built here deployed, proven by its
    # build-id, tested, and the board brought back
    assert f"labgrid place qemu-board acquired (root@127.0.0.1:{board.entry().port})" in stderr["n1"]
    data = json.loads((root / "n1" / cells["board qemu-board access"] / "results.json").read_text())
    assert data["verdict"] == "pass" and data["guest"]["installed"] == board.installed
    assert data["guest"]["kernel_release"] == data["kernel"]["version"]
    assert any(i.startswith("smmu3.") for i in data["guest"]["iommus"])
    names = sorted(t["name"] for t in data["tests"])
    assert names == sorted(listed_tests("access"))  # the same source lists the same tests on any arch
    assert data["board"]["deploy"]["method"] == "kexec"
    assert data["board"]["return"] == {**data["board"]["return"], "how": "reboot", "ok": True,
                                      "release": board.installed["release"]}
    # the trial kernel's log, followed over SSH, brackets every test
    console = (root / "n1" / cells["board qemu-board access"] / "console.log").read_text()
    for name in names:
        assert f"iommufd-harness: RUN {name}" in console and f"iommufd-harness: END {name} 0" in console
    # every night the board ran the kernel built that night (its build-id), on the place, and came home
    for night in ("n1", "n2", "n3"):
        data = json.loads((root / night / cells["board qemu-board access"] / "results.json").read_text())
        assert data["guest"]["build_id"] == data["kernel"]["build_id"] and data["guest"]["built_kernel_booted"]
        assert data["board"]["return"]["ok"] and data["guest"]["board"] == "qemu-board"
    # the cells merged anywhere else give the night's verdict
    again = harness("report", "--merge", *(str(root / "n2" / d) for d in cells.values()),
                    "--out", str(tmp_path / "m"))
    assert again.returncode == 1
    assert json.loads((tmp_path / "m" / "merged.json").read_text())["verdict"] == \
        json.loads((root / "n2" / "merged.json").read_text())["verdict"] == "fail"
    assert place.acquired_by() == "None"
    board.assert_back_home(place.lab)
