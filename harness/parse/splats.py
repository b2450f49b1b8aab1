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

import itertools
import re
from collections import deque
from dataclasses import dataclass, field, replace

from harness.parse.splat_lines import (
    BANNER,
    BANNER_CLOSED,
    CALL_TRACE,
    CONSEQUENCE,
    CUT_HERE,
    CUT_HERE_KINDS,
    END_MARKER,
    FRAME,
    MIDLINE_STAMP,
    REOPEN,
    STACK_TAG,
    STAMP,
    SYSRQ_CRASH,
    TRAILER,
    frames,
    hang_signature,
    headline_kind,
    signature,
)

KINDS = ("warning", "bug", "oops", "kasan", "kfence", "kcsan", "ubsan", "lockdep", "refcount", "lockup",
         "rcu_stall", "hung_task", "panic", "hang", "leak")
# hang: a blocked task's stack, asked for (sysrq w); leak: an object kmemleak found unreferenced (parse.leaks)

MAX_LINES = 200  # kernel lines in one report; a KASAN report is ~80, a lockdep one ~60
GAP_S = 5.0  # a forward jump of the printk clock larger than this ends a report ...
TAIL_GAP_S = 1.0  # ... or, once its first call trace is complete, larger than this
QUIET_LINES = 50  # userspace lines in a row that end an unfinished report
HOLD_LINES = 50  # lines a finished report waits for a panic that would make it fatal
LOOKBACK = 8  # kernel lines before a headline searched for its "cut here" line



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
        cuts = [0] + [m.start() for m in MIDLINE_STAMP.finditer(body) if m.start() > 0] + [len(body)]
        for a, b in itertools.pairwise(cuts):
            seg = body[a:b]
            m = STAMP.match(seg)
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
        self.trace = _NONE if self.kind in BANNER_CLOSED else _CLOSED
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
        if END_MARKER.match(msg):
            self.add(line)
            return _DONE
        if self.kind in BANNER_CLOSED and BANNER.match(msg):
            self.add(line)
            return _DONE
        if self.trace == _CLOSED:
            if TRAILER.match(msg):
                pass
            elif REOPEN.match(msg) or (self.kind == "rcu_stall" and msg.startswith("rcu: ")):
                self.trace = _NONE
            elif (tag := STACK_TAG.match(msg)) and not tag.group(1):
                self.trace, self.depth = _OPEN, 1
            else:
                return _BEFORE
        elif CALL_TRACE.match(msg):
            self.trace, self.depth, self.frames = _OPEN, 0, 0
        elif self.trace == _OPEN:
            tag = STACK_TAG.match(msg)
            if tag:
                self.depth += -1 if tag.group(1) else 1
                if tag.group(1) and self.depth <= 0:
                    self.add(line)
                    self._close_trace()
                    return _CONTINUE
            elif self.depth == 0:
                if FRAME.match(msg):
                    self.frames += 1
                elif self.frames:  # a trace without stack tags (arm64) ended on the previous line
                    self._close_trace()
                    return self.step(line)
        self.add(line)
        return _DONE if len(self.lines) >= MAX_LINES else _CONTINUE

    def splat(self) -> Splat:
        text = "".join(line.msg + "\n" for line in self.lines)
        title = self.head.msg.strip()
        # Only a crash's RIP names its bug; a lockup's RIP is wherever the CPU happened to spin;
        # a hung task's bug is where it waits.
        sig = (self.kind == "hung_task" and hang_signature(frames(text))) or \
            signature(title, text if self.kind in ("bug", "oops") else "")
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
        # where the kernel started to die: the report a panic names as its
        # cause (oops=panic, panic_on_warn, ...), else the panic line itself
        self.panic_at: int | None = None

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
            if kind == "panic" and self._held.kind != "panic" and CONSEQUENCE.search(line.msg):
                self._held = replace(self._held, fatal=True)
            self._release()
        if kind == "panic" and self.panic_at is None:
            self.panic_at = self._out[-1].start if self._out and self._out[-1].fatal else line.start
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
        if BANNER.match(last) and kind in ("kasan", "kfence", "lockdep", "bug"):
            return recent[-1:]
        if SYSRQ_CRASH.match(last) and kind == "panic":
            return recent[-1:]
        if kind in CUT_HERE_KINDS:
            for i in range(len(recent) - 1, -1, -1):
                if CUT_HERE.match(recent[i].msg):
                    return recent[i:]
                if END_MARKER.match(recent[i].msg):
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


_SHOW_BLOCKED = re.compile(r"sysrq: Show Blocked State\s*$")
_TASK = re.compile(r"task:(.{1,15}?)\s+state:(\S)\s.*?\bpid:\s*(\d+)")
# what a task's part of the dump holds after its "task:" line
_TASK_BODY = re.compile(r"(?:Workqueue: |Call [Tt]race:|\s*</?[A-Z#][A-Z0-9_#]*>\s*$|[A-Z0-9]{2,3}: |\s+\S)")


def blocked_tasks(text: str, offset: int = 0) -> list[Splat]:
    """The tasks of the last blocked-task dump in ``text`` (``sysrq w``,
    which the harness asks for when a test makes no progress): one report
    of kind ``hang`` per task, its stack as ``text`` and where it hangs as
    its signature (``hung in iommufd_access_rw <- mutex_lock``).  Positions
    are offsets in ``text`` plus ``offset``, as for :func:`scan`."""
    lines = _split(text if text.endswith("\n") else text + "\n", offset)
    starts = [i for i, line in enumerate(lines) if line.ts is not None and _SHOW_BLOCKED.match(line.msg)]
    if not starts:
        return []
    found: list[Splat] = []
    cur: list[_Line] = []

    def close() -> None:
        if cur:
            m = _TASK.match(cur[0].msg)
            body = "".join(line.msg + "\n" for line in cur)
            comm, state, pid = m.group(1).strip(), m.group(2), m.group(3)
            title = f"task {comm}:{pid} blocked (state {state})"
            found.append(Splat("hang", title, hang_signature(frames(body)) or signature(title), cur[0].start,
                               cur[-1].end, body, False))
            cur.clear()

    for line in lines[starts[-1] + 1:]:
        if line.ts is None:
            continue  # userspace output sharing the console
        if _TASK.match(line.msg):
            close()
            cur.append(line)
        elif cur and _TASK_BODY.match(line.msg):
            cur.append(line)
            if STACK_TAG.match(line.msg) and line.msg.strip() == "</TASK>":
                close()
        else:
            close()
    close()
    return found


def group(splats: list[Splat]) -> dict[str, list[Splat]]:
    """Reports by signature, in order of first appearance: one entry per bug."""
    groups: dict[str, list[Splat]] = {}
    for s in splats:
        groups.setdefault(s.signature, []).append(s)
    return groups
