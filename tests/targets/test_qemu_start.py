"""QemuVM.start against stand-in QEMU binaries: QEMU listens on the QMP
socket and the harness connects, and every way QEMU can fail to come up ends
in a BootError that says why, within the QMP limit."""

import dataclasses
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness import arches, profiles
from harness.errors import BootError
from harness.targets import qemu

# Speaks just enough QMP for start() and stop(); the socket comes from the
# "-chardev socket,...,path=P,server=on,wait=off" that the harness passes.
QMP_SERVER = """
import json, os, socket, sys
argv = sys.argv[1:]
spec = next(argv[i + 1] for i, a in enumerate(argv) if a == "-chardev" and argv[i + 1].startswith("socket,"))
opts = dict(o.split("=", 1) for o in spec.split(",")[1:] if "=" in o)
assert opts.get("server") == "on" and opts.get("wait") == "off", spec
MODE = os.environ["FAKE_QEMU_MODE"]
srv = socket.socket(socket.AF_UNIX)
srv.bind(opts["path"])
srv.listen(1)
conn, _ = srv.accept()
if MODE == "silent":
    conn.recv(1)  # never greets; ends when the harness gives up
    sys.exit(0)
def send(obj):
    conn.sendall((json.dumps(obj) + "\\r\\n").encode())
def commands():  # QMP clients need not end a command with a newline
    buf, dec = "", json.JSONDecoder()
    while data := conn.recv(4096):
        buf += data.decode()
        while buf.strip():
            try:
                cmd, end = dec.raw_decode(buf.lstrip())
            except ValueError:
                break
            buf = buf.lstrip()[end:]
            yield cmd
send({"QMP": {"version": {"qemu": {"micro": 19, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}})
for cmd in commands():
    name = cmd["execute"]
    ret = {}
    if name == "human-monitor-command":
        ret = "  dev: intel-iommu, id \\"\\"\\n"
    reply = {"return": ret}
    if "id" in cmd:
        reply["id"] = cmd["id"]
    send(reply)
    if name == "quit":
        sys.exit(0)
"""


def _vm(tmp_path: Path, script: str, monkeypatch, mode: str = "") -> qemu.QemuVM:
    fake = tmp_path / "fake-qemu"
    fake.write_text(f"#!{sys.executable}\n" + textwrap.dedent(script))
    fake.chmod(0o755)
    monkeypatch.setenv("FAKE_QEMU_MODE", mode)
    prof = profiles.load("x86_64-vtd")
    prof = dataclasses.replace(prof, qemu=dataclasses.replace(prof.qemu, binary=str(fake)))
    run = tmp_path / "run"
    return qemu.QemuVM(qemu.BootRequest(prof, Path("/k/bzImage"), Path("/r/initrd.cpio"), run, "tcg",
                                        qmp_dir=tmp_path))


def test_the_harness_connects_to_the_monitor_qemu_listens_on(tmp_path, monkeypatch):
    vm = _vm(tmp_path, QMP_SERVER, monkeypatch, "qmp")
    with vm:
        vm.start()
        assert vm.version == "7.2.19"
        assert vm.alive()
        vm.stop()
    assert vm.proc.returncode == 0  # it was asked to quit, not killed


def test_a_qemu_that_exits_at_once_is_reported_with_what_it_said(tmp_path, monkeypatch):
    vm = _vm(tmp_path, """
        import sys
        print("qemu-system-x86_64: -device intel-iommu: no such device", file=sys.stderr)
        sys.exit(1)
    """, monkeypatch)
    t0 = time.monotonic()
    with pytest.raises(BootError, match="no such device"):
        vm.start()
    assert time.monotonic() - t0 < qemu.QMP_TIMEOUT / 2  # not the whole limit


@pytest.mark.parametrize("mode, script", [
    ("never listens", "import time\ntime.sleep(60)\n"),
    ("silent", QMP_SERVER),
], ids=["never-listens", "never-greets"])
def test_a_qemu_that_never_comes_up_is_given_up_on_at_the_limit(tmp_path, monkeypatch, mode, script):
    monkeypatch.setattr(qemu, "QMP_TIMEOUT", 0.5)
    vm = _vm(tmp_path, script, monkeypatch, mode)
    t0 = time.monotonic()
    with pytest.raises(BootError, match="TimeoutError"):
        vm.start()
    assert time.monotonic() - t0 < 5
    assert not vm.alive()


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm")
def test_the_kvm_probe_is_cached_until_the_qemu_binary_changes(tmp_path):
    fake = tmp_path / "qemu-system-x86_64"
    runs = tmp_path / "runs"
    fake.write_text(f"#!/bin/sh\necho run >> {runs}\necho 'Run /init as init process'\n")
    fake.chmod(0o755)
    arch = arches.load("x86_64")
    probe = lambda: qemu.probe_kvm(arch, str(fake), Path("/k/bzImage"), tmp_path / "cache")  # noqa: E731
    assert probe() == ("kvm", "KVM booted a test kernel")
    assert probe() == ("kvm", "KVM booted a test kernel (cached)")
    assert runs.read_text().count("run") == 1  # the cached answer runs nothing, not even --version
    os.utime(fake, ns=(time.time_ns(), time.time_ns() + 10**9))  # another QEMU
    assert probe() == ("kvm", "KVM booted a test kernel")
    assert runs.read_text().count("run") == 2


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm")
@pytest.mark.parametrize("prints", ["", "qemu-system-x86_64: warning: host doesn't support requested feature\n"],
                         ids=["silent", "one-warning"])
def test_a_kvm_that_hangs_silently_is_given_up_on_when_the_console_goes_quiet(tmp_path, prints):
    """Nested KVM that never boots prints nothing (or one QEMU warning, as
    here): the probe decides after the idle window, not the whole limit,
    and a kernel that keeps printing is given its time."""
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text(f"#!/bin/sh\ncat <<'END'\n{prints}END\nsleep 60\n" if prints else "#!/bin/sh\nsleep 60\n")
    fake.chmod(0o755)
    arch = arches.load("x86_64")
    t0 = time.monotonic()
    accel, why = qemu.probe_kvm(arch, str(fake), Path("/k/bzImage"), tmp_path / "cache", timeout=20, idle=1.0)
    assert (accel, time.monotonic() - t0 < 5) == ("tcg", True), why
    assert "silent for 1 s" in why
    slow = tmp_path / "slow" / "qemu-system-x86_64"
    slow.parent.mkdir()
    slow.write_text("#!/bin/sh\nfor i in 1 2 3 4; do echo booting; sleep 0.5; done\necho 'Run /init as init process'\n")
    slow.chmod(0o755)
    assert qemu.probe_kvm(arch, str(slow), Path("/k/bzImage"), tmp_path / "cache2", timeout=20, idle=1.0)[0] == "kvm"


def _server(behaviour):
    """A one-connection TCP server on 127.0.0.1 doing ``behaviour(conn)``; its port."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        with conn:
            behaviour(conn)
        srv.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1]


def test_a_port_whose_server_talks_ssh_is_handed_over_with_the_banner_unread():
    port = _server(lambda c: (c.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n"), c.recv(100)))
    sock = qemu.probe_ssh("127.0.0.1", port)
    assert sock is not None
    with sock:
        assert sock.recv(100).startswith(b"SSH-2.0-OpenSSH_9.2p1")


@pytest.mark.parametrize("behaviour", [
    lambda c: None,  # closed at once: what QEMU's forwarder does when the guest port refuses
    lambda c: time.sleep(1),  # accepted, silent
    lambda c: c.sendall(b"HTTP/1.1 400\r\n"),  # not SSH
], ids=["closed", "silent", "not-ssh"])
def test_a_port_without_an_ssh_server_behind_it_is_not_taken(behaviour):
    port = _server(behaviour)
    t0 = time.monotonic()
    assert qemu.probe_ssh("127.0.0.1", port, wait=0.3) is None
    assert time.monotonic() - t0 < 1


def test_a_port_nobody_listens_on_is_not_taken():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert qemu.probe_ssh("127.0.0.1", port) is None


def test_a_guest_that_dies_before_the_monitor_is_up_is_reported_by_its_console(tmp_path, monkeypatch):
    """The guest starts with QEMU: a kernel that panics (and QEMU that exits,
    -no-reboot) before the harness reached QMP is a panic, not a QEMU that
    did not start.  The stand-in writes a real guest's console (the fault
    fixture that panics in iommufd_init, tests/golden/capture.py)."""
    golden = Path(__file__).parents[1] / "golden" / "console" / "x86_64-panic-at-boot.log"
    vm = _vm(tmp_path, f"""
        import shutil, sys
        argv = sys.argv[1:]
        spec = next(argv[i + 1] for i, a in enumerate(argv) if a == "-chardev" and argv[i + 1].startswith("file,"))
        shutil.copy({str(golden)!r}, dict(o.split("=", 1) for o in spec.split(",")[1:])["path"])
        sys.exit(0)
    """, monkeypatch)
    with pytest.raises(BootError, match="panicked during boot") as e:
        vm.start()
    assert "fault fixture: panic in iommufd_init" in e.value.message


CLEAN_BOOT = (Path(__file__).parents[1] / "golden" / "console" / "x86_64-clean-boot.log").read_text()


def _network_up(console: str) -> int:
    """Where the line after the init's "network up" starts."""
    return console.index("\n", console.index(qemu.NET_MARKER)) + 1


@pytest.fixture
def banner_server():
    """A port whose server sends an SSH banner to every connection: (port,
    the connections it accepted)."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.sendall(b"SSH-2.0-dropbear_2022.83\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1], accepted
    srv.close()
    for conn in accepted:
        conn.close()


@pytest.fixture
def booting_vm(tmp_path, monkeypatch, banner_server):
    """A QemuVM as start() leaves it, its guest's SSH port forwarded to
    banner_server, its console (empty) for the test to write."""
    import subprocess

    vm = _vm(tmp_path, "import time\ntime.sleep(60)\n", monkeypatch)
    vm.req.run_dir.mkdir(parents=True)
    vm.console.path.write_text("")
    vm.proc = subprocess.Popen(["sleep", "60"])
    vm.ssh_port = banner_server[0]
    yield vm
    vm.proc.kill()
    vm.proc.wait()


def test_a_guest_whose_sshd_refuses_the_first_connection_is_not_hammered(booting_vm, banner_server):
    """From the "network up" line on the port is probed; once a connection
    sshd answered has failed (say, authentication), the harness waits for
    the init's marker and tries at its pace instead of probing every few ms."""
    vm = booting_vm
    vm.req.boot_timeout = 1.0
    vm.console.path.write_text(CLEAN_BOOT[:_network_up(CLEAN_BOOT)])

    def connect(sock=None):
        if sock is not None:
            sock.close()
        raise OSError("Authentication failed.")

    with pytest.raises(BootError, match="Authentication failed"):
        vm.wait_for_sshd(connect)
    assert len(banner_server[1]) == 1


def test_a_connection_made_once_the_network_is_up_waits_for_the_end_of_the_init(booting_vm):
    """From the init's "network up" line the port is probed and the
    connection made while the init goes on (mounts, huge pages, its facts
    line); wait_for_sshd returns it only once the init has said "sshd
    started", so that the facts are there to verify and the tests find their
    huge pages.  The console is a real boot's (tests/golden/capture.py)."""
    import threading

    vm = booting_vm
    vm.req.boot_timeout = 10.0
    up = _network_up(CLEAN_BOOT)
    assert up <= CLEAN_BOOT.index(qemu.FACTS_MARKER) < CLEAN_BOOT.index(qemu.SSHD_MARKER)
    vm.console.path.write_text(CLEAN_BOOT[:up])
    connected = []

    def connect(sock=None):
        connected.append((time.monotonic(), sock is not None))
        if sock is not None:
            sock.close()
        return "session"

    written = []

    def rest_of_the_boot():
        time.sleep(0.5)
        with open(vm.console.path, "a") as f:
            f.write(CLEAN_BOOT[up:])
        written.append(time.monotonic())

    writer = threading.Thread(target=rest_of_the_boot)
    writer.start()
    try:
        assert vm.wait_for_sshd(connect) == "session"
        returned = time.monotonic()
    finally:
        writer.join()
    assert len(connected) == 1 and connected[0][1], "one connection, made on the probed socket"
    assert connected[0][0] < written[0], "connected before the init was done"
    assert returned >= written[0], "returned only once the init said sshd started"
    assert qemu.FACTS_MARKER in vm.console.text


def test_an_init_that_stops_after_an_early_connection_is_named(booting_vm):
    """Connected after "network up", but the init never says "sshd
    started": the boot fails at the limit and says what it saw."""
    vm = booting_vm
    vm.req.boot_timeout = 0.5
    facts = CLEAN_BOOT.index("\n", CLEAN_BOOT.index(qemu.FACTS_MARKER)) + 1
    vm.console.path.write_text(CLEAN_BOOT[:facts])

    def connect(sock=None):
        sock.close()
        return "session"

    with pytest.raises(BootError, match="init did not finish within 0 s .*never said 'sshd started'"):
        vm.wait_for_sshd(connect)
