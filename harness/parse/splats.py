"""Kernel splats (WARN, BUG, Oops, KASAN, lockdep, lockups, stalls, panics) in a console log.

A test can pass while the kernel complains: a WARN in the access path, a
use-after-free that KASAN catches, a lock inversion.  A CI gate has to see
those, so this module finds every report in the serial console (or a dmesg
dump), cuts out exactly its lines, and gives each a signature that is equal
for the same bug seen on another CPU, in another process or at another time,
so repeated reports group.

How a report is delimited (x86_64 and arm64, 6.x formats):

- it starts at its headline (``WARNING: CPU: ...``, ``BUG: KASAN: ...``,
  ``Kernel panic - not syncing: ...``); a ``cut here`` line and WARN message
  lines just before it, a ``=====`` banner right before it and the
  ``sysrq: Trigger a crash`` line before a sysrq panic belong to it too;
- it ends at ``---[ end trace ... ]---`` / ``---[ end Kernel panic ... ]---``,
  at the closing ``=====`` banner for KASAN and KFENCE, or else at the end of
  its call trace (``</TASK>``, or the last frame of an arm64 trace) plus the
  trailer lines that follow a trace (``Modules linked in:``, ``CR2:``,
  ``Kernel Offset:``, further NMI backtraces of the same report);
- it also ends before the next report's headline, before a jump of the
  printk clock (the kernel prints a report in one burst), after
  ``MAX_LINES`` kernel lines, or when the log goes quiet (``settle``/``flush``).

With printk timestamps on, lines without one are userspace output sharing the
console: they never start a report and are left out of a report's text.

The scanner is line-driven and deterministic: feeding a text in any chunks
gives the same reports as ``scan`` on the whole text, each exactly once.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

KINDS = ("warning", "bug", "oops", "kasan", "kfence", "ubsan", "lockdep", "refcount", "lockup",
         "rcu_stall", "hung_task", "panic")

MAX_LINES = 200  # kernel lines in one report; a KASAN report is ~80, a lockdep one ~60
GAP_S = 5.0  # a forward jump of the printk clock larger than this ends a report ...
TAIL_GAP_S = 1.0  # ... or, once its first call trace is complete, larger than this
QUIET_LINES = 50  # userspace lines in a row that end an unfinished report
HOLD_LINES = 50  # lines a finished report waits for a panic that would make it fatal
LOOKBACK = 8  # kernel lines before a headline searched for its "cut here" line

# -- line syntax ---------------------------------------------------------------

# "[   12.345678] ", with an optional "<4>" level (dmesg -r) and caller id ("[  T245]").
_STAMP = re.compile(r"(?:<\d>)?\[\s*(\d+\.\d+)\](?:\[\s*[TC]\d+\])? ?")
# A timestamp inside a physical line: userspace output without a newline before it.
_MIDLINE_STAMP = re.compile(r"(?:<\d>)?\[\s*\d+\.\d{6}\]")

_CUT_HERE = re.compile(r"-+\[ cut here \]-+\s*$")
_BANNER = re.compile(r"={20,}\s*$")
_SYSRQ_CRASH = re.compile(r"sysrq: Trigger a crash\s*$")
_END_MARKER = re.compile(r"---\[ end (?:trace|Kernel panic)\b")
_CALL_TRACE = re.compile(r"Call [Tt]race:")
_STACK_TAG = re.compile(r"\s*<(/?)([A-Z#][A-Z0-9_#]*)>\s*$")
_FRAME = re.compile(r"\s+(?:\? )?(?:[\w.$]+\+0x[0-9a-f]+/0x[0-9a-f]+|0x[0-9a-f]+\b)")
# Lines that may follow the end of a trace and still belong to the report.
_TRAILER = re.compile(r"(?:Modules linked in:|CR2: |Code: |Kernel Offset: |Rebooting in |CPU features: "
                      r"|Memory Limit: |SMP: stopping)")
# ... and those that start another part of it (more CPUs' backtraces).
_REOPEN = re.compile(r"(?:NMI backtrace for cpu \d+|Sending NMI from CPU \d+)")
_RIP = re.compile(r"(?:RIP: [0-9a-f]{4}:|pc : )([\w.$]+)\+0x")

_LOCKDEP_WARNINGS = (
    r"possible circular locking dependency detected|possible recursive locking detected"
    r"|possible irq lock inversion dependency detected|inconsistent lock state|bad unlock balance detected!"
    r"|suspicious RCU usage|held lock freed!|lock held when returning to user space!|\S+ still has locks held!"
    r"|\S+-safe -> \S+-unsafe lock order detected|Nested lock was not taken|chain_key collision"
    r"|bad contention detected!"
)

# First match wins: specific patterns before the generic "BUG: ".
_HEADLINES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((kind, re.compile(rx)) for kind, rx in (
    ("warning", r"WARNING: CPU: \d+ PID: \d+ at "),
    ("lockdep", rf"WARNING: (?:{_LOCKDEP_WARNINGS})"),
    ("lockdep", r"INFO: (?:possible irq lock inversion dependency detected|trying to register non-static key)"),
    ("lockdep", (r"BUG: (?:MAX_LOCK\w* too low!|MAX_STACK_TRACE_ENTRIES too low!|key \S+ has not been registered!"
                 r"|looking up invalid subclass)")),
    ("refcount", r"refcount_t: (?:underflow|saturated|addition on 0|decrement hit 0)"),
    ("kasan", r"BUG: KASAN: "),
    ("kfence", r"BUG: KFENCE: "),
    ("ubsan", r"UBSAN: [\w-]+ in "),
    ("lockup", r"(?:watchdog: )?BUG: soft lockup - CPU#\d+ stuck for "),
    ("lockup", r"(?:(?:NMI )?watchdog: )?Watchdog detected hard LOCKUP on cpu \d+"),
    ("lockup", r"BUG: workqueue lockup - "),
    ("rcu_stall", (r"(?:rcu: )?INFO: [\w-]+ (?:self-detected stall on CPU|detected (?:expedited )?stalls on "
                   r"(?:CPUs/)?tasks)")),
    ("hung_task", r"INFO: task .+:\d+ blocked for more than \d+ seconds"),
    ("panic", r"Kernel panic - not syncing: "),
    ("oops", r"(?:Internal error: )?Oops\b[^:]*: "),
    ("oops", (r"(?:general protection fault|invalid opcode|double fault|stack segment|stack guard page)"
              r"[^:]*: [0-9a-f]{4} \[#\d+\]")),
    ("bug", r"kernel BUG at \S+"),
    ("bug", r"Unable to handle kernel (?:NULL pointer dereference|paging request|execute from non-executable)"),
    ("bug", r"BUG: "),
    ("bug", r"BUG [\w.:()-]+ \((?:Not tainted|Tainted: [^)]*)\): "),  # SLUB object debugging
))

# Panic reasons that mean "the report just before killed the kernel".
_CONSEQUENCE = re.compile(
    r"Fatal exception|Attempted to kill (?:init|the idle task)|Aiee, killing interrupt handler|panic_on_warn set"
    r"|panic_on_taint set|kasan\.fault=panic|softlockup: hung tasks|Hard LOCKUP|hung_task: blocked tasks"
    r"|RCU Stall|\bOops\b")

# Report kinds whose call trace is only a part: they end with a "=====" banner.
_BANNER_CLOSED = frozenset({"kasan", "kfence"})
# Kinds that a WARN-style "cut here" line introduces.
_CUT_HERE_KINDS = frozenset({"warning", "refcount", "bug", "ubsan"})


def headline_kind(message: str) -> str | None:
    """The kind of report that ``message`` (one console line, timestamp
    stripped) starts, or None: the single place that says what a splat is."""
    for kind, rx in _HEADLINES:
        if rx.match(message):
            return kind
    return None


# -- signatures ----------------------------------------------------------------

_SRC_LOC = re.compile(r"([\w./+-]+\.(?:c|h|S|rs):\d+(?::\d+)?)")
_SIG_SUBS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(rx), repl) for rx, repl in (
    (r"\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+", ""),  # symbol offsets
    (r"\((?:Not tainted|Tainted: [^)]*)\)", "()"),  # SLUB's "(Tainted: G    B  )"
    (r"\bTainted: [A-Z ]+", ""),
    (r"\bNot tainted\b", ""),
    (r"\bkworker/[\w+-]+(?::[\w+-]+)?", "kworker/*"),
    (r"\b0x[0-9a-fA-F]+\b", "ADDR"),
    (r"\b[0-9a-fA-F]{8,16}\b", "ADDR"),
    (r"\b(CPU|cpu)(s?[#:]?\s?)\d+", r"\1\2N"),
    (r"\bPID: \d+", "PID: N"),
    (r"\bpid[:=] ?\d+", "pid N"),
    (r"(?<=\S)([:/])\d+(?=[\]/\s,)]|$)", r"\1N"),  # comm:pid, comm/pid
    (r"\[#\d+\]", "[#N]"),
    (r"\b\d+(?:\.\d+)?(?=\s?(?:s|ms|us|ns|secs?|seconds|jiffies)\b)", "N"),  # durations
    (r"\bt=\d+", "t=N"),
    (r"\s+", " "),
))


def signature(title: str, text: str = "") -> str:
    """``title`` with everything that differs between two sightings of the
    same bug removed (addresses, symbol offsets, CPU numbers, PIDs, durations,
    taint flags), so repeated reports group.  Source locations (file:line)
    are kept: they name the bug.  A title that names no code at all (``BUG:
    kernel NULL pointer dereference, address: ...``) gets the faulting
    function from the report's ``RIP:``/``pc :`` line in ``text``, so two
    different NULL dereferences do not group."""
    parts = _SRC_LOC.split(title)
    for i in range(0, len(parts), 2):  # even parts are outside source locations
        for rx, repl in _SIG_SUBS:
            parts[i] = rx.sub(repl, parts[i])
    sig = "".join(parts).strip()
    if text and not _SRC_LOC.search(title) and not re.search(r"\+0x[0-9a-f]+/", title):
        m = _RIP.search(text)
        if m:
            sig += f" at {m.group(1)}"
    return sig


# -- reports -------------------------------------------------------------------


@dataclass(frozen=True)
class Splat:
    """One kernel report.  ``start``/``end`` are character offsets of its
    first and last line in the scanned text (``end`` excludes the newline), so
    ``text[start:end]`` is the raw report, userspace lines in it included;
    ``text`` here has only the kernel lines, timestamps stripped."""

    kind: str
    title: str
    signature: str
    start: int
    end: int
    text: str
    fatal: bool


@dataclass(slots=True)
class _Line:
    start: int
    end: int
    ts: float | None
    msg: str


def _split(chunk: str, pos: int) -> list[_Line]:
    """Logical lines of ``chunk`` (whole lines only) starting at offset ``pos``.
    A timestamp in the middle of a physical line starts a new logical line:
    that is a kernel line printed after userspace output without a newline."""
    lines = []
    for raw in chunk.split("\n")[:-1]:
        body = raw.rstrip("\r")
        cuts = [0] + [m.start() for m in _MIDLINE_STAMP.finditer(body) if m.start() > 0] + [len(body)]
        for a, b in itertools.pairwise(cuts):
            seg = body[a:b]
            m = _STAMP.match(seg)
            ts = float(m.group(1)) if m else None
            msg = (seg[m.end():] if m else seg).replace("\r", "").rstrip()
            lines.append(_Line(pos + a, pos + b, ts, msg))
        pos += len(raw) + 1
    return lines


_CONTINUE, _DONE, _BEFORE = range(3)
_NONE, _OPEN, _CLOSED = range(3)  # call-trace states


@dataclass
class _Build:
    """A report being assembled, line by line."""

    kind: str
    head: _Line
    lines: list[_Line] = field(default_factory=list)
    trace: int = _NONE
    depth: int = 0
    frames: int = 0
    has_warning: bool = False
    traced: bool = False  # a call trace of this report has ended
    last_ts: float | None = None
    quiet: int = 0

    def add(self, line: _Line) -> None:
        self.lines.append(line)
        self.quiet = 0
        if line.ts is not None:
            self.last_ts = line.ts

    def _continues(self, kind: str) -> bool:
        """Is a headline inside this report part of it?  The WARNING that
        refcount_t prints, and the Oops line after a BUG line, are."""
        if kind == "warning" and self.kind == "refcount":
            return not self.has_warning and self.trace == _NONE and len(self.lines) <= 4
        if kind == "oops" and self.kind == "bug":
            return self.trace == _NONE and len(self.lines) <= 20
        return False

    def _close_trace(self) -> None:
        # KASAN/KFENCE go on after their trace (allocation and free stacks).
        self.trace = _NONE if self.kind in _BANNER_CLOSED else _CLOSED
        self.traced = True

    def step(self, line: _Line) -> int:
        msg = line.msg
        gap = TAIL_GAP_S if self.traced else GAP_S
        if line.ts is not None and self.last_ts is not None and not (
                self.last_ts - 1.0 <= line.ts <= self.last_ts + gap):
            return _BEFORE
        kind = headline_kind(msg)
        if kind is not None:
            if not self._continues(kind):
                return _BEFORE
            self.has_warning |= kind == "warning"
        if _END_MARKER.match(msg):
            self.add(line)
            return _DONE
        if self.kind in _BANNER_CLOSED and _BANNER.match(msg):
            self.add(line)
            return _DONE
        if self.trace == _CLOSED:
            if _TRAILER.match(msg):
                pass
            elif _REOPEN.match(msg) or (self.kind == "rcu_stall" and msg.startswith("rcu: ")):
                self.trace = _NONE
            elif (tag := _STACK_TAG.match(msg)) and not tag.group(1):
                self.trace, self.depth = _OPEN, 1
            else:
                return _BEFORE
        elif _CALL_TRACE.match(msg):
            self.trace, self.depth, self.frames = _OPEN, 0, 0
        elif self.trace == _OPEN:
            tag = _STACK_TAG.match(msg)
            if tag:
                self.depth += -1 if tag.group(1) else 1
                if tag.group(1) and self.depth <= 0:
                    self.add(line)
                    self._close_trace()
                    return _CONTINUE
            elif self.depth == 0:
                if _FRAME.match(msg):
                    self.frames += 1
                elif self.frames:  # a trace without stack tags (arm64) ended on the previous line
                    self._close_trace()
                    return self.step(line)
        self.add(line)
        return _DONE if len(self.lines) >= MAX_LINES else _CONTINUE

    def splat(self) -> Splat:
        text = "".join(line.msg + "\n" for line in self.lines)
        title = self.head.msg.strip()
        # Only a crash's RIP names its bug; a lockup's RIP is wherever the CPU happened to spin.
        sig = signature(title, text if self.kind in ("bug", "oops") else "")
        return Splat(kind=self.kind, title=title, signature=sig, start=self.lines[0].start,
                     end=self.lines[-1].end, text=text, fatal=self.kind == "panic")


class SplatScanner:
    """Finds reports in a console log that grows: ``feed`` it whatever was
    appended since the last call and it returns the reports that are now
    complete, each exactly once, in order.

    A finished report is held back for up to ``HOLD_LINES`` lines (or until
    the next report starts) to learn whether a panic follows that makes it
    ``fatal``.  When the console has gone quiet (no output for a few
    seconds, e.g. between tests) call ``settle`` to get what is pending; at
    the end of the log (the VM is gone) call ``flush``, which also takes an
    unterminated last line."""

    def __init__(self, offset: int = 0) -> None:
        self._pos = offset  # offset of self._buf[0] in the whole text
        self._buf = ""
        self._stamped = False  # seen a timestamped line: from then on, unstamped lines are userspace
        self._recent: deque[_Line] = deque(maxlen=LOOKBACK)
        self._cur: _Build | None = None
        self._held: Splat | None = None
        self._held_for = 0
        self._out: list[Splat] = []

    @property
    def busy(self) -> bool:
        """A report has started and is not complete yet."""
        return self._cur is not None

    def feed(self, new_text: str) -> list[Splat]:
        self._buf += new_text
        cut = self._buf.rfind("\n") + 1
        if cut:
            chunk, self._buf = self._buf[:cut], self._buf[cut:]
            for line in _split(chunk, self._pos):
                self._line(line)
            self._pos += cut
        return self._take()

    def settle(self) -> list[Splat]:
        """The log is quiet: whatever report is in progress is complete, and
        no panic is coming for the one held back."""
        self._finish()
        self._release()
        return self._take()

    def flush(self) -> list[Splat]:
        """End of the log: the last line counts even without its newline."""
        if self._buf:
            self.feed("\n")
            self._pos -= 1  # the newline was ours, not the text's
        return self.settle()

    # -- internals ---------------------------------------------------------------

    def _take(self) -> list[Splat]:
        out, self._out = self._out, []
        return out

    def _line(self, line: _Line) -> None:
        if line.ts is not None:
            self._stamped = True
        elif self._stamped:  # userspace output between kernel lines
            if self._cur is not None:
                self._cur.quiet += 1
                if self._cur.quiet >= QUIET_LINES:
                    self._finish()
            self._tick()
            return
        if self._cur is not None:
            verdict = self._cur.step(line)
            if verdict == _CONTINUE:
                return
            if verdict == _DONE:
                self._finish()
                return
            self._finish()
        kind = headline_kind(line.msg)
        if kind is None:
            self._recent.append(line)
            self._tick()
            return
        if self._held is not None:
            if kind == "panic" and self._held.kind != "panic" and _CONSEQUENCE.search(line.msg):
                self._held = replace(self._held, fatal=True)
            self._release()
        build = _Build(kind, line)
        for pre in self._prelude(kind):
            build.add(pre)
        build.add(line)
        self._recent.clear()
        self._cur = build

    def _prelude(self, kind: str) -> list[_Line]:
        """Lines just before a headline that belong to its report."""
        recent = list(self._recent)
        if not recent:
            return []
        last = recent[-1].msg
        if _BANNER.match(last) and kind in ("kasan", "kfence", "lockdep", "bug"):
            return recent[-1:]
        if _SYSRQ_CRASH.match(last) and kind == "panic":
            return recent[-1:]
        if kind in _CUT_HERE_KINDS:
            for i in range(len(recent) - 1, -1, -1):
                if _CUT_HERE.match(recent[i].msg):
                    return recent[i:]
                if _END_MARKER.match(recent[i].msg):
                    break
        return []

    def _finish(self) -> None:
        if self._cur is None:
            return
        self._release()
        self._held, self._held_for = self._cur.splat(), 0
        self._cur = None
        self._recent.clear()

    def _tick(self) -> None:
        if self._held is not None:
            self._held_for += 1
            if self._held_for >= HOLD_LINES:
                self._release()

    def _release(self) -> None:
        if self._held is not None:
            self._out.append(self._held)
            self._held = None


def scan(text: str, offset: int = 0) -> list[Splat]:
    """Every report in a complete log; ``offset`` is added to the positions
    (for scanning a tail of a file whose head was scanned before)."""
    scanner = SplatScanner(offset)
    return scanner.feed(text) + scanner.flush()


def group(splats: list[Splat]) -> dict[str, list[Splat]]:
    """Reports by signature, in order of first appearance: one entry per bug."""
    groups: dict[str, list[Splat]] = {}
    for s in splats:
        groups.setdefault(s.signature, []).append(s)
    return groups


def decode(splat: Splat, tree: Path, vmlinux: Path, log: Path, timeout: float = 120.0) -> str | None:
    """The report with file:line for every frame, from the kernel tree's own
    ``scripts/decode_stacktrace.sh`` (so the decoding matches that tree).
    None when the script, ``vmlinux`` or bash is missing, or the script fails
    or overruns ``timeout``; the command and its stderr are appended to
    ``log``.  Never raises: decoding is a bonus on a report already made."""
    script = Path(tree) / "scripts" / "decode_stacktrace.sh"
    bash = shutil.which("bash")
    if bash is None or not script.is_file() or not Path(vmlinux).is_file():
        return None
    argv = [bash, str(script), str(vmlinux), str(tree)]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=tree, text=True, errors="replace", start_new_session=True)
    except (OSError, ValueError) as e:
        _note(log, f"$ {shlex.join(argv)}\n{e}\n")
        return None
    try:
        out, err = proc.communicate(splat.text, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        _note(log, f"$ {shlex.join(argv)}\ntimed out after {timeout:.0f} s\n")
        return None
    except Exception as e:  # noqa: BLE001 - a broken pipe or an encoding error is no reason to fail a run
        _kill_group(proc)
        _note(log, f"$ {shlex.join(argv)}\n{type(e).__name__}: {e}\n")
        return None
    _note(log, f"$ {shlex.join(argv)}\n{err}exit status {proc.returncode}\n")
    if proc.returncode != 0 or not out.strip():
        return None
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    """The script runs addr2line and nm: kill them with it."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):  # nothing more can be done
        proc.communicate(timeout=10)


def _note(log: Path, text: str) -> None:
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(text)
    except OSError:
        pass
