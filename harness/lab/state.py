"""The lab's shared state: which run holds which board (a lease, renewed
while its holder runs: a holder that died leaves a lock that expires), and
which boards are quarantined.  One directory per lab, with one file per
board and kind; every controller machine of the lab shares it (NFS), and
every wait on it is bounded.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import json
import os
import platform
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import LabError

LEASE_S = 120.0  # a lock not renewed for this long belongs to a holder that died
GUARD_WAIT_S = 30.0  # how long one board's state file is waited for (held by another controller)


class LockLost(LabError):
    """The run's lease on its board ended while the run went on (renewals
    failed until it expired, or another holder has the lock): whatever the
    board did since is not the run's, so the run has no verdict."""

    voids_verdict = True


def holder_name() -> str:
    return f"{getpass.getuser()}@{platform.node()} pid {os.getpid()}"


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class LabState:
    """One lab's state directory."""

    root: Path

    def _file(self, board: str, kind: str) -> Path:
        return self.root / f"{board}.{kind}"

    @contextmanager
    def _guard(self, board: str):
        """Mutual exclusion for reading and writing one board's state
        (flock: local, and NFSv4 through its byte-range locks), waited for
        up to GUARD_WAIT_S: a holder never takes it for longer than a read
        and a write, so one that keeps it is hung, or the NFS server is."""
        path = self._file(board, "guard")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise LabError(f"cannot use the lab state directory {self.root}: {e.strerror}",
                           "set 'state' in the lab file to a directory this user can write") from None
        try:
            deadline = time.monotonic() + GUARD_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LabError(
                            f"the lab state file {path} stayed locked for {GUARD_WAIT_S:g} s",
                            "a process holds it and does not let go (a hung harness on a controller of this lab: "
                            f"lslocks or fuser {path} on each of them shows it), or the file server of {self.root} "
                            "does not answer; end that process or fix the mount, then run again") from None
                    time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                except OSError as e:
                    raise LabError(f"cannot lock the lab state file {path}: {e.strerror}",
                                   "put 'state' on a filesystem with working locks (local, NFSv4, or NFSv3 "
                                   "with lockd)") from None
            yield
        finally:
            os.close(fd)

    def _read(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"holder": "unknown (unreadable lock file)", "expires": 0}

    def _write(self, path: Path, doc: dict) -> None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(path)

    # -- locks ---------------------------------------------------------------------

    def lock_info(self, board: str) -> dict | None:
        """The live lock on ``board`` (None if free or expired)."""
        doc = self._read(self._file(board, "lock"))
        if doc is None or float(doc.get("expires", 0)) < _now():
            return None
        return doc

    def try_lock(self, board: str, token: str, what: str, lease: float = LEASE_S) -> dict | None:
        """Take the lock; returns None on success, else the holder's lock."""
        with self._guard(board):
            held = self.lock_info(board)
            if held is not None and held.get("token") != token:
                return held
            now = _now()
            self._write(self._file(board, "lock"), {
                "token": token, "holder": holder_name(), "what": what, "since": _iso(now),
                "expires": now + lease, "expires_at": _iso(now + lease)})
            return None

    def renew(self, board: str, token: str, lease: float = LEASE_S) -> bool:
        with self._guard(board):
            path = self._file(board, "lock")
            doc = self._read(path)
            if doc is None or doc.get("token") != token:
                return False
            doc["expires"] = _now() + lease
            doc["expires_at"] = _iso(doc["expires"])
            self._write(path, doc)
            return True

    def unlock(self, board: str, token: str | None = None) -> bool:
        """Drop the lock (only ours, unless ``token`` is None: lab release)."""
        with self._guard(board):
            path = self._file(board, "lock")
            doc = self._read(path)
            if doc is None or (token is not None and doc.get("token") != token):
                return False
            path.unlink(missing_ok=True)
            return True

    # -- quarantine ------------------------------------------------------------------

    def quarantine(self, board: str, reason: str) -> None:
        with self._guard(board):
            self._write(self._file(board, "quarantine"), {"reason": reason, "by": holder_name(),
                                                          "since": _iso(_now())})

    def quarantined(self, board: str) -> dict | None:
        return self._read(self._file(board, "quarantine"))

    def release(self, board: str) -> list[str]:
        """``lab release``: end the quarantine and any lock.  Says what it did."""
        done = []
        with self._guard(board):
            q = self._file(board, "quarantine")
            if q.exists():
                q.unlink()
                done.append("quarantine ended")
        if self.unlock(board):
            done.append("lock dropped")
        return done


def describe_lock(doc: dict) -> str:
    return f"{doc.get('holder', 'unknown')} since {doc.get('since', '?')} ({doc.get('what', '')}), " \
           f"lease until {doc.get('expires_at', '?')}"


@dataclass
class BoardLock:
    """The lock on one board for a whole run: taken (waiting up to ``wait``
    seconds for its holder), renewed in the background, released on exit.
    The renewals only take note when the lease is lost (not renewed for a
    whole lease, or no longer ours); the run asks :meth:`check` before each
    step and stops there."""

    state: LabState
    board: str
    what: str
    wait: float = 0.0
    lease: float = field(default_factory=lambda: LEASE_S)
    say: object = None
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _renewed: float = 0.0  # time.monotonic() of the last renewal that held (before it was asked)
    _lost: str | None = None  # why the lease is not ours any more (set by the renewals)
    _failure: str | None = None  # the last renewal's error, until one holds again

    def __enter__(self) -> "BoardLock":
        q = self.state.quarantined(self.board)
        if q is not None:
            raise LabError(f"board {self.board} is quarantined since {q.get('since')}: {q.get('reason')}",
                           f"check the board, then: iommufd-harness lab release LAB {self.board}")
        deadline = time.monotonic() + self.wait
        told = False
        while True:
            asked = time.monotonic()
            held = self.state.try_lock(self.board, self.token, self.what, self.lease)
            if held is None:
                break
            if time.monotonic() >= deadline:
                raise LabError(f"board {self.board} is locked by {describe_lock(held)}",
                               "wait for that run to end (--lock-wait SECONDS waits), or if its holder is gone "
                               f"for sure: iommufd-harness lab release LAB {self.board}")
            if not told and self.say:
                self.say(f"board {self.board} is locked by {describe_lock(held)}: waiting")
                told = True
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
        self._renewed, self._lost = asked, None
        self._thread = threading.Thread(target=self._renew, name=f"lock-{self.board}", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 4):
            asked = time.monotonic()
            try:
                ours = self.state.renew(self.board, self.token, self.lease)
            except (OSError, LabError) as e:
                # the next renewal tries again while the lease covers the misses
                self._failure = str(getattr(e, "message", None) or e)
                if asked - self._renewed >= self.lease:
                    self._lost = (f"it could not be renewed for {asked - self._renewed:.0f} s, so its lease ran "
                                  f"out: {getattr(e, 'message', None) or e}")
                    return
                continue
            if not ours:
                held = self.state.lock_info(self.board)
                self._lost = ("another run holds it now: " + describe_lock(held) if held is not None
                              else "its lock is gone (dropped by 'lab release', or expired)")
                return
            self._renewed, self._failure = asked, None

    def check(self) -> None:
        """Raise :class:`LockLost` if the run does not hold the board any
        more: the renewals found it taken or gone, or none held for a whole
        lease (also when the renewals themselves are stuck)."""
        why = self._lost
        if why is None and self._thread is not None and time.monotonic() - self._renewed >= self.lease:
            failure = self._failure  # the renewals' last error, when they failed rather than hung
            why = (f"it could not be renewed for {time.monotonic() - self._renewed:.0f} s, so its lease ran out: "
                   f"{failure}" if failure else
                   f"it was not renewed for {time.monotonic() - self._renewed:.0f} s, so its lease ran out")
        if why is not None:
            raise LockLost(f"the run lost its lock on board {self.board}: {why}",
                           "the run stopped there; see who holds the board (iommufd-harness lab check LAB) and "
                           f"that the lab state directory {self.state.root} is reachable from this machine")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.state.unlock(self.board, self.token)
        except LabError:
            if exc_type is None and self._lost is None:
                raise
            # the run already ends with why (the lost lock's state directory,
            # most likely): that error is the one to see; the lease lapses
