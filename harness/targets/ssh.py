"""Commands on a guest or board over SSH (paramiko), each bounded in time.

One connection carries many commands, each in its own channel.  stdout and
stderr are read together (reading only one while the other fills its window
would deadlock), lines are handed to a callback as they arrive, and a
wall-clock limit ends the wait, whatever the remote process does, and
whatever the remote machine does: paramiko waits for the server's reply to a
request (exec, exit status) without a limit, and a machine that stopped (a
panic, a kexec) behind a forwarder that keeps the TCP connection open (QEMU's
user network) never replies, so a watchdog closes the connection a little
after the limit (the next command connects again).  If opening a channel
fails (some SSH servers drop the connection after a channel closes) the
client reconnects once and tries again.
"""

from __future__ import annotations

import contextlib
import logging
import select
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from harness.errors import TargetError

if TYPE_CHECKING:
    import paramiko

# paramiko's transport thread logs a traceback for every refused or cut
# connection; waiting for a machine to come up makes many, and the harness
# reports what matters itself
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# paramiko.config imports invoke whenever paramiko loads, only to run the
# commands of an ssh_config "Match exec", which the harness never reads: that
# import is 40 % of paramiko's (0.1 s of CPU that a TCG guest booting on the
# same cores would otherwise share).  Without it paramiko works the same, and
# "Match exec" would say that invoke is missing.
sys.modules.setdefault("invoke", None)


def _paramiko():
    """paramiko, imported on first use: a run starts its VM before it needs
    SSH, and importing paramiko (and what it imports) is a tenth of a second
    of every start.  :func:`harness.proc.preload` imports it in the
    background while the guest boots."""
    import paramiko

    return paramiko


MAX_OUTPUT = 64 * 1024 * 1024  # per stream; guest output is untrusted
WATCHDOG_GRACE_S = 2.0  # past a command's limit before its connection is cut


@dataclass(frozen=True)
class ExecResult:
    argv: tuple[str, ...]
    exit_status: int | None  # None: no exit status (timeout, connection lost)
    stdout: bytes
    stderr: bytes
    timed_out: bool
    lost: bool  # the connection went away while the command ran
    duration_s: float

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err_text(self) -> str:
        return self.stderr.decode(errors="replace")


class SshLost(TargetError):
    pass


def command_line(user: str, host: str, port: int, key: Path | str | None = None,
                 known_hosts: Path | str | None = None) -> str:
    """How a person reaches a target with OpenSSH (--keep-vm, boot, a
    board): the run's key and, with ``known_hosts``, the host key it pinned,
    checked strictly."""
    words = ["ssh", *(["-i", str(key)] if key else []), "-p", str(port)]
    if known_hosts:
        words += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    words.append(f"{user}@{host}")
    return " ".join(shlex.quote(w) for w in words)


def quote(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


class SshClient:
    def __init__(self, host: str, port: int, user: str, key_file: Path, host_key: str | None,
                 connect_timeout: float = 15.0):
        paramiko = _paramiko()
        self.host, self.port, self.user = host, port, user
        try:
            self.key = paramiko.PKey.from_path(str(key_file))
        except (OSError, paramiko.SSHException) as e:
            raise TargetError(f"cannot load SSH key {key_file}: {e}") from None
        self.host_key = host_key  # "ssh-ed25519 AAAA..." to pin, or None (not recommended)
        self.connect_timeout = connect_timeout
        self.transport: paramiko.Transport | None = None
        self.connections = 0  # successful connects (1 when every command shared one connection)
        self.commands = 0

    # -- connection ----------------------------------------------------------

    def connect(self, sock: socket.socket | None = None) -> None:
        """Connect and authenticate; ``sock``: a connection to the server made
        already (which this client then owns)."""
        paramiko = _paramiko()
        self.close()
        if sock is None:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
            except OSError as e:
                raise SshLost(f"cannot connect to {self.host}:{self.port}: {e}") from None
        t = paramiko.Transport(sock)
        if self.host_key is not None:
            # ask for the kind of key that is pinned, so a server with several keys offers that one
            kind = self.host_key.split()[0]
            t.get_security_options().key_types = (
                ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if kind == "ssh-rsa" else [kind])
        t.banner_timeout = self.connect_timeout
        t.handshake_timeout = self.connect_timeout
        t.auth_timeout = self.connect_timeout
        try:
            t.start_client(timeout=self.connect_timeout)
            remote = t.get_remote_server_key()
            if self.host_key is not None:
                want_type, want_b64 = self.host_key.split()[:2]
                if remote.get_name() != want_type or remote.get_base64() != want_b64:
                    t.close()
                    raise TargetError(
                        f"host key of {self.host}:{self.port} does not match the pinned key "
                        f"(got {remote.get_name()} {remote.get_fingerprint().hex()})",
                        "the machine is not the one expected; check known_hosts before trusting it",
                    )
            t.auth_publickey(self.user, self.key)
        except TargetError:
            raise
        except (paramiko.SSHException, OSError, EOFError) as e:
            t.close()
            raise SshLost(f"SSH to {self.host}:{self.port} failed: {e or type(e).__name__}") from None
        t.set_keepalive(5)
        self.transport = t
        self.connections += 1

    def connected(self) -> bool:
        return self.transport is not None and self.transport.is_active()

    def close(self) -> None:
        if self.transport is not None:
            try:
                self.transport.close()
            except Exception:
                pass
            self.transport = None

    def _open_channel(self) -> paramiko.Channel:
        paramiko = _paramiko()
        for attempt in (1, 2):
            if not self.connected():
                self.connect()
            try:
                return self.transport.open_session(timeout=self.connect_timeout)
            except (paramiko.SSHException, OSError, EOFError) as e:
                self.close()
                if attempt == 2:
                    raise SshLost(f"cannot open an SSH channel to {self.host}:{self.port}: {e}") from None
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _cut_after(self, seconds: float):
        """Close the connection if the block is still running ``seconds``
        from now; yields an Event that says whether it was cut."""
        transport = self.transport
        cut = threading.Event()

        def fire() -> None:
            cut.set()
            try:
                transport.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

        timer = threading.Timer(max(0.0, seconds), fire)
        timer.daemon = True
        timer.start()
        try:
            yield cut
        finally:
            timer.cancel()

    # -- commands ------------------------------------------------------------

    def put(self, path: str, data: bytes, mode: int = 0o644, timeout: float = 120.0, gzipped: bool = False) -> None:
        """Write ``data`` to ``path`` on the remote side (plain exec + stdin:
        needs no SFTP server, only a POSIX shell and cat).  ``gzipped``:
        ``data`` is gzip-compressed and the remote side unpacks it (gunzip)."""
        paramiko = _paramiko()
        chan = self._open_channel()
        self.commands += 1
        with self._cut_after(timeout + WATCHDOG_GRACE_S) as cut:
            try:
                chan.settimeout(timeout)
                write = 'gunzip -c > "$1"' if gzipped else 'cat > "$1"'
                chan.exec_command(quote(["sh", "-c", write + ' && chmod "$2" "$1"', "sh", path, f"{mode:o}"]))
                chan.sendall(data)
                chan.shutdown_write()
                status = chan.recv_exit_status()
                err = chan.recv_stderr(4096).decode(errors="replace") if chan.recv_stderr_ready() else ""
            except (paramiko.SSHException, OSError, EOFError) as e:
                if cut.is_set():
                    raise SshLost(f"copying {path} to {self.host} did not finish within {timeout:.0f} s: "
                                  "the machine stopped answering") from None
                raise SshLost(f"copying {path} to {self.host} failed: {e}") from None
            finally:
                chan.close()
        if status != 0:
            raise TargetError(f"cannot write {path} on {self.host}: {err.strip() or f'status {status}'}")

    def run(self, argv: Sequence[str], timeout: float, on_stdout_line: Callable[[str], None] | None = None,
            on_stderr_line: Callable[[str], None] | None = None, check_stop: Callable[[], bool] | None = None,
            ) -> ExecResult:
        """Run ``argv`` (quoted, never interpreted by a shell) with a wall-clock
        ``timeout``.  ``check_stop()`` is polled; when it returns True the
        wait ends early as if timed out."""
        paramiko = _paramiko()
        argv = tuple(str(a) for a in argv)
        start = time.monotonic()
        try:
            chan = self._open_channel()
        except SshLost as e:
            # the machine is unreachable: report it like a connection lost mid-command
            return ExecResult(argv, None, b"", str(e).encode(), False, True, time.monotonic() - start)
        self.commands += 1
        out, err = bytearray(), bytearray()
        bufs = {"out": b"", "err": b""}
        timed_out = lost = False
        status = None

        def emit(kind: str, data: bytes, final: bool = False) -> None:
            cb = on_stdout_line if kind == "out" else on_stderr_line
            if cb is None:
                return
            buf = bufs[kind] + data
            *lines, rest = buf.split(b"\n")
            for line in lines:
                cb(line.decode(errors="replace").rstrip("\r"))
            if final and rest:
                cb(rest.decode(errors="replace").rstrip("\r"))
                rest = b""
            bufs[kind] = rest

        with self._cut_after(start + timeout - time.monotonic() + WATCHDOG_GRACE_S) as cut:
            try:
                chan.exec_command(quote(argv))
                streams = ((chan.recv_ready, chan.recv, out, "out"),
                           (chan.recv_stderr_ready, chan.recv_stderr, err, "err"))
                while True:
                    ready = next((s for s in streams if s[0]()), None)
                    if ready is not None:
                        _, recv, buf, kind = ready
                        data = recv(65536)
                        if len(buf) < MAX_OUTPUT:
                            buf += data  # a bytearray: out or err itself
                        emit(kind, data)
                        continue
                    if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                        if chan.closed or chan.eof_received:
                            status = chan.recv_exit_status()
                            # paramiko's -1: closed without an exit status (the
                            # machine went away under it); there is none
                            status = None if status == -1 else status
                            break
                    if time.monotonic() - start > timeout or (check_stop is not None and check_stop()):
                        timed_out = True
                        break
                    if not self.connected():
                        lost = True
                        break
                    select.select([chan], [], [], 0.2)
            except (paramiko.SSHException, OSError, EOFError):
                lost = True
            finally:
                try:
                    chan.close()
                except Exception:
                    pass
        if cut.is_set() and status is None:
            # stuck in a request the machine never answered: out of time (the
            # watchdog closed the connection; the next command connects again)
            timed_out, lost = True, False
        emit("out", b"", final=True)
        emit("err", b"", final=True)
        if lost:
            self.close()
        return ExecResult(argv, status, bytes(out), bytes(err), timed_out, lost, time.monotonic() - start)

