"""The SSH client against a tiny in-process SSH server on 127.0.0.1."""

from __future__ import annotations

import time

import paramiko
import pytest

from fakes import ssh_listener, ssh_server_base

from harness.errors import TargetError
from harness.stages import image
from harness.targets.ssh import SshClient


class _Server(ssh_server_base()):
    def __init__(self, allowed: paramiko.PKey, behaviour: dict):
        super().__init__(allowed)
        self.behaviour = behaviour

    def check_channel_exec_request(self, channel, command):
        if self.behaviour.get("stall"):
            time.sleep(60)  # a machine that stopped: the request is never answered
        return super().check_channel_exec_request(channel, command)

    def _serve(self, chan, command):
        time.sleep(0.05)  # let the exec request's reply go out first, as a real server does
        if command.startswith("sleep"):
            time.sleep(30)
            return
        if command.startswith("vanish"):
            # some output, then the channel closes without an exit status: a
            # machine that kexec'd or rebooted away under the command
            chan.sendall(b"half an answer\n")
            chan.close()
            return
        if command.startswith("noisy"):
            # lots of stderr before any stdout: a client reading only stdout would stall
            chan.sendall_stderr(b"e" * 2_000_000)
        try:
            chan.sendall(f"ran: {command}\n".encode())
            chan.send_exit_status(7 if "fail" in command else 0)
        except OSError:  # the client has gone (a test that ended its command at a limit)
            return
        chan.close()
        self.behaviour["served"] += 1
        if self.behaviour.get("die_after_channel"):
            time.sleep(0.2)
            chan.get_transport().close()  # like an SSH server that aborts after one channel


@pytest.fixture
def server(tmp_path):
    keys = image.make_keys(tmp_path)
    host = paramiko.Ed25519Key.from_private_key(__import__("io").StringIO(keys.host_private["openssh"].decode()))
    client_key = paramiko.PKey.from_path(str(keys.client_private))
    behaviour = {"served": 0}
    port, close = ssh_listener(host, lambda: _Server(client_key, behaviour))
    yield port, keys, behaviour
    close()


def test_many_commands_share_one_connection(server):
    port, keys, _ = server
    c = SshClient("127.0.0.1", port, "root", keys.client_private, keys.host_public)
    c.connect()
    for i in range(5):
        res = c.run(["echo", f"it's {i}"], 10)
        assert res.exit_status == 0 and res.text == f"ran: echo 'it'\"'\"'s {i}'\n"  # quoted, no shell injection
    assert c.connections == 1 and c.commands == 5
    assert c.run(["fail"], 10).exit_status == 7


def test_server_dying_after_a_channel_is_survived_by_reconnecting(server):
    port, keys, behaviour = server
    behaviour["die_after_channel"] = True
    c = SshClient("127.0.0.1", port, "root", keys.client_private, keys.host_public)
    c.connect()
    outputs = []
    for i in range(3):
        outputs.append(c.run(["echo", str(i)], 10).text)
        time.sleep(0.5)
    assert outputs == ["ran: echo 0\n", "ran: echo 1\n", "ran: echo 2\n"]
    assert c.connections == 3


def test_stderr_and_stdout_are_read_together(server):
    port, keys, _ = server
    c = SshClient("127.0.0.1", port, "root", keys.client_private, keys.host_public)
    lines = []
    res = c.run(["noisy"], 30, on_stdout_line=lines.append)
    assert not res.timed_out and len(res.stderr) == 2_000_000
    assert lines == ["ran: noisy"]


def test_wall_clock_limit_holds_whatever_the_remote_does(server):
    port, keys, _ = server
    c = SshClient("127.0.0.1", port, "root", keys.client_private, keys.host_public)
    t0 = time.monotonic()
    res = c.run(["sleep", "30"], 1.5)
    assert res.timed_out and res.exit_status is None
    assert time.monotonic() - t0 < 5


def test_a_changed_host_key_is_refused(server, tmp_path):
    port, keys, _ = server
    other = image.make_keys(tmp_path / "other")
    c = SshClient("127.0.0.1", port, "root", keys.client_private, other.host_public)
    with pytest.raises(TargetError, match="does not match the pinned key"):
        c.connect()



def test_a_machine_that_stops_answering_ends_a_command_at_its_limit(server):
    """The machine stops right after a channel opened (a panic, a kexec):
    the request to start the command is never answered, and QEMU's user
    network keeps the TCP connection open.  The command still ends at its
    limit (plus a little), as timed out; so does a copy."""
    port, keys, behaviour = server
    c = SshClient("127.0.0.1", port, "root", keys.client_private, keys.host_public)
    c.connect()
    assert c.run(["echo", "1"], 10).exit_status == 0
    behaviour["stall"] = True
    t0 = time.monotonic()
    res = c.run(["echo", "2"], 1.0)
    assert res.timed_out and res.exit_status is None
    assert time.monotonic() - t0 < 6
    assert not c.connected()
    c.connect()
    t0 = time.monotonic()
    with pytest.raises(TargetError, match="did not finish within 1 s"):
        c.put("/tmp/x", b"data", timeout=1.0)
    assert time.monotonic() - t0 < 6


def test_a_command_cut_without_an_exit_status_has_none(server):
    """A status the machine never sent is not a status: a caller checking
    for 0 and a caller checking for "none" both see the command did not end."""
    port, keys, _ = server
    c = SshClient("127.0.0.1", port, "root", keys.client_private, keys.host_public)
    res = c.run(["vanish"], 10)
    assert res.exit_status is None and res.stdout == b"half an answer\n" and not res.timed_out
    assert c.run(["echo", "after"], 10).exit_status == 0


def test_paramiko_loads_without_invoke():
    """paramiko's config module imports invoke (0.1 s) for ssh_config
    "Match exec" only; the harness keeps it from loading."""
    import subprocess
    import sys

    code = ("import sys; import harness.targets.ssh as s; s._paramiko(); "
            "print([m for m in sys.modules if m.split('.')[0] == 'invoke' and sys.modules[m] is not None])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_line_a_person_pastes_reaches_the_target_as_the_harness_does():
    """One way to say it for VMs and boards: the run's key, the port, the
    host key pinned and checked strictly; paths with spaces quoted."""
    import shlex

    from harness.targets.ssh import command_line

    line = command_line("root", "10.0.0.2", 2222, "/home/ci/my keys/id", "/w/known_hosts")
    argv = shlex.split(line)
    assert argv == ["ssh", "-i", "/home/ci/my keys/id", "-p", "2222", "-o", "UserKnownHostsFile=/w/known_hosts",
                    "-o", "StrictHostKeyChecking=yes", "root@10.0.0.2"]
    assert command_line("u", "h", 22) == "ssh -p 22 u@h"
