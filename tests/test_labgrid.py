"""Labgrid places with a real labgrid coordinator and exporter on loopback
(seconds, no kernel): a place another holder has (each of the three ways
labgrid-client says so), its quarantine tag, and its serial console: the
exporter exports a NetworkSerialPort served by a TCP server standing in
for ser2net, and the harness follows it through labgrid's SerialDriver for
as long as it holds the place."""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import lab
from harness.lab import labgrid
from harness.targets.qemu import free_port

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(not (BIN / "labgrid-coordinator").is_file(), reason="labgrid is not installed")


class Uart:
    """A raw TCP serial port that prints numbered lines to whoever reads it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            n = 0
            while not self.stop.is_set():
                try:
                    c.sendall(f"uart line {n}\r\n".encode())
                except OSError:
                    break
                n += 1
                time.sleep(0.05)
            c.close()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("labgrid")
    procs = []
    addr = f"127.0.0.1:{free_port()}"
    uart = Uart()
    closed = free_port()  # nobody listens there

    def start(argv, what):
        log = open(tmp_path / f"{what}.log", "wb")
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                      start_new_session=True))

    def client(*args):
        return subprocess.run([str(BIN / "labgrid-client"), "-x", addr, *args], capture_output=True, text=True,
                              timeout=60)

    def wait_for(ok, what):
        deadline = time.monotonic() + 60
        while not ok():
            assert time.monotonic() < deadline, f"{what} did not come up"
            time.sleep(0.3)

    try:
        start([str(BIN / "labgrid-coordinator"), "-l", addr], "coordinator")
        exported = ""
        for name, port in (("b1", uart.port), ("b2", closed)):
            exported += (f"{name}:\n  NetworkService:\n    address: 127.0.0.1\n    port: 22\n    username: root\n"
                         f"  NetworkSerialPort:\n    host: 127.0.0.1\n    port: {port}\n    speed: 115200\n"
                         "    protocol: raw\n")
        exported += "b3:\n  NetworkService:\n    address: 127.0.0.1\n    port: 22\n    username: root\n"
        (tmp_path / "exporter.yaml").write_text(exported)
        wait_for(lambda: client("places").returncode == 0, "the coordinator")
        start([str(BIN / "labgrid-exporter"), "-c", addr, "-n", "t", "--hostname", "127.0.0.1",
               str(tmp_path / "exporter.yaml")], "exporter")
        wait_for(lambda: "t/b3/NetworkService" in client("resources").stdout, "the exporter")
        for name in ("b1", "b2", "b3"):
            assert client("-p", name, "create").returncode == 0
            assert client("-p", name, "add-match", f"t/{name}/*").returncode == 0
        yield addr, uart.port, closed
    finally:
        uart.stop.set()
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)


def entry(name: str, console: str | None = None) -> lab.BoardEntry:
    return lab.BoardEntry(name, "", 22, "root", Path("key"), Path("known_hosts"), "arm64", "kexec", None,
                          "profile", console=console, labgrid=name)


def test_the_place_console_is_followed_into_a_file_while_the_place_is_held(coordinator, tmp_path):
    addr, port, _ = coordinator
    p = labgrid.Place("b1", addr)
    log = tmp_path / "logs" / "labgrid-console.log"
    with labgrid.PlaceLock(p, "b1") as lock:
        assert lock.follow_console(log) == {"host": "127.0.0.1", "port": port, "speed": 115200, "protocol": "raw"}
        resolved = p.resolve(entry("b1"), lock.console.log)
        deadline = time.monotonic() + 20
        while log.read_bytes().count(b"\r\n") < 6:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        # the harness reads it like a lab file's console command
        shown = subprocess.run(resolved.console, shell=True, capture_output=True, text=True).stdout
        # every line, in order, from when the follower connected (what a UART printed before is gone)
        numbers = [int(x.split()[-1]) for x in shown.splitlines()]
        assert len(numbers) >= 5 and numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        follower = lock.console.proc
        # a lab file's own console command is kept
        assert p.resolve(entry("b1", console="conserver-log b1"), log).console == "conserver-log b1"
    assert follower.poll() is not None  # it stops with the lock
    assert p.acquired_by() is None
    size = log.stat().st_size
    time.sleep(0.5)
    assert log.stat().st_size == size  # nothing reads it any more


def test_a_console_that_cannot_be_read_is_named_and_the_place_released(coordinator, tmp_path):
    addr, _, closed = coordinator
    p = labgrid.Place("b2", addr)
    with pytest.raises(lab.LabError, match=rf"its serial console could not be read: .*127.0.0.1:{closed}"):
        with labgrid.PlaceLock(p, "b2") as lock:
            lock.follow_console(tmp_path / "con.log")
    assert p.acquired_by() is None


def test_a_place_without_a_serial_port_has_no_console(coordinator, tmp_path):
    addr, _, _ = coordinator
    p = labgrid.Place("b3", addr)
    with labgrid.PlaceLock(p, "b3") as lock:
        assert lock.follow_console(tmp_path / "con.log") is None and lock.console is None
        assert p.resolve(entry("b3"), None).console is None


@pytest.mark.parametrize("who", ["another user on another host", "this user on another host",
                                 "this user on this host (another run here)"])
def test_a_place_held_by_someone_is_refused_with_the_holder_named_then_waited_for(coordinator, who):
    """labgrid-client words "taken" three ways, after who holds the place;
    each is refused naming the holder the coordinator has, and --lock-wait
    waits until that holder lets go."""
    addr, _, _ = coordinator
    me_host, me_user = socket.gethostname(), getpass.getuser()
    holder_host, holder_user = {"another user on another host": ("ci-3", "nightly"),
                                "this user on another host": ("ci-4", me_user),
                                "this user on this host (another run here)": (me_host, me_user)}[who]
    env = {**os.environ, "LG_HOSTNAME": holder_host, "LG_USERNAME": holder_user}
    env.pop("LG_COORDINATOR", None)

    def holder(*args):
        return subprocess.run([str(BIN / "labgrid-client"), "-x", addr, "-p", "b3", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    assert holder("acquire").returncode == 0
    p = labgrid.Place("b3", addr)
    try:
        t0 = time.monotonic()
        with pytest.raises(lab.LabError, match=rf"board b3 is locked by {holder_host}/{holder_user} \(labgrid "
                                               rf"place b3, coordinator {addr}\)"):
            p.acquire(wait=0)
        said = []
        threading.Timer(2.0, lambda: holder("release")).start()
        p.acquire(wait=30, say=said.append)
        assert time.monotonic() - t0 >= 2.0
        assert said == [f"board b3 is locked by {holder_host}/{holder_user} (labgrid): waiting"]
        assert p.acquired_by() == f"{me_host}/{me_user}"
    finally:
        holder("release")
        p.release()
    assert p.acquired_by() is None


def test_a_quarantine_is_a_tag_on_the_place_every_controller_sees(coordinator):
    addr, _, _ = coordinator
    p, q = labgrid.Place("b3", addr), labgrid.Place("b3", addr)  # two controllers
    assert q.quarantined("b3") is None
    p.quarantine("b3", "did not come back to its installed kernel")
    try:
        assert q.tags()[labgrid.QUARANTINE_TAG] == "yes"
        assert q.quarantined("b3")["reason"] == f"tagged {labgrid.QUARANTINE_TAG}=yes on labgrid place b3"
    finally:
        assert q.unquarantine("b3") == [f"labgrid tag {labgrid.QUARANTINE_TAG} removed"]
    assert p.quarantined("b3") is None
