"""What the lines of a kernel report look like (headlines, call-trace
frames, trailers, end markers), and the signature that makes two sightings
of the same bug compare equal.  ``headline_kind`` is the single place that
says what starts a report; ``harness.parse.splats`` cuts reports out of a log
with these."""

from __future__ import annotations

import re

# -- line syntax ---------------------------------------------------------------

# "[   12.345678] ", with an optional "<4>" level (dmesg -r) and caller id ("[  T245]").
STAMP = re.compile(r"(?:<\d>)?\[\s*(\d+\.\d+)\](?:\[\s*[TC]\d+\])? ?")
# A timestamp inside a physical line: userspace output without a newline before it.
MIDLINE_STAMP = re.compile(r"(?:<\d>)?\[\s*\d+\.\d{6}\]")

CUT_HERE = re.compile(r"-+\[ cut here \]-+\s*$")
BANNER = re.compile(r"={20,}\s*$")
SYSRQ_CRASH = re.compile(r"sysrq: Trigger a crash\s*$")
END_MARKER = re.compile(r"---\[ end (?:trace|Kernel panic)\b")
CALL_TRACE = re.compile(r"Call [Tt]race:")
STACK_TAG = re.compile(r"\s*<(/?)([A-Z#][A-Z0-9_#]*)>\s*$")
FRAME = re.compile(r"\s+(?:\? )?(?:[\w.$]+\+0x[0-9a-f]+/0x[0-9a-f]+|0x[0-9a-f]+\b)")
# Lines that may follow the end of a trace and still belong to the report.
# (A lockdep kernel's WARN prints where irqs were last switched on and off
# after its trace, then its end marker.)
TRAILER = re.compile(r"(?:Modules linked in:|CR2: |Code: |Kernel Offset: |Rebooting in |CPU features: "
                      r"|Memory Limit: |SMP: stopping|irq event stamp: |(?:hard|soft)irqs last +(?:en|dis)abled at )")
# ... and those that start another part of it (more CPUs' backtraces).
REOPEN = re.compile(r"(?:NMI backtrace for cpu \d+|Sending NMI from CPU \d+)")
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
    ("lockdep", r"\[ BUG: Invalid wait context \]"),
    ("lockdep", (r"BUG: (?:MAX_LOCK\w* too low!|MAX_STACK_TRACE_ENTRIES too low!|key \S+ has not been registered!"
                 r"|looking up invalid subclass)")),
    ("refcount", r"refcount_t: (?:underflow|saturated|addition on 0|decrement hit 0)"),
    ("kasan", r"BUG: KASAN: "),
    ("kfence", r"BUG: KFENCE: "),
    ("kcsan", r"BUG: KCSAN: "),
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
CONSEQUENCE = re.compile(
    r"Fatal exception|Attempted to kill (?:init|the idle task)|Aiee, killing interrupt handler|panic_on_warn set"
    r"|panic_on_taint set|kasan\.fault=panic|softlockup: hung tasks|Hard LOCKUP|hung_task: blocked tasks"
    r"|RCU Stall|\bOops\b")

# Report kinds whose call trace is only a part: they end with a "=====" banner.
BANNER_CLOSED = frozenset({"kasan", "kfence", "kcsan"})
# Kinds that a WARN-style "cut here" line introduces.
CUT_HERE_KINDS = frozenset({"warning", "refcount", "bug", "ubsan"})


def headline_kind(message: str) -> str | None:
    """The kind of report that ``message`` (one console line, timestamp
    stripped) starts, or None: the single place that says what a splat is."""
    for kind, rx in _HEADLINES:
        if rx.match(message):
            return kind
    return None


# -- signatures ----------------------------------------------------------------

# Where a source path starts inside a kernel tree: what comes before it is the
# build's (UBSAN prints the path the compiler was given, absolute or relative).
_TOP_DIR = (r"(?:arch|block|certs|crypto|drivers|fs|include|init|io_uring|ipc|kernel|lib|mm|net|rust|samples"
            r"|scripts|security|sound|tools|usr|virt)/")
_TREE_PATH = re.compile(rf"^(?!{_TOP_DIR})\S*?/(?={_TOP_DIR})")
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
    (r"(?<=\w)#\d+\b", "#N"),  # a test's task name (run-tests' comm "iommufd#7")
    (r"\b\d+(?:\.\d+)?(?=\s?(?:s|ms|us|ns|secs?|seconds|jiffies)\b)", "N"),  # durations
    (r"\bt=\d+", "t=N"),
    (r"\s+", " "),
))


# -- where a task hangs -------------------------------------------------------------

# A frame's function ("? " frames are guesses of the unwinder: left out).
_FRAME_FUNC = re.compile(r"\s+([\w.$]+)\+0x[0-9a-f]+/0x[0-9a-f]+")
# The scheduler and the sleeping primitives a blocked task waits in: what a
# hang's stack has on top of the code that called them.
_BLOCKING = re.compile(
    r"_*(?:switch_to|schedule\w*|context_switch|finish_task_switch\w*|preempt_schedule\w*|io_schedule\w*"
    r"|\w*mutex_lock\w*|mutex_\w+_slowpath\w*|\w*rwsem_down_\w+|down(?:_\w+)?|rt_mutex\w*|rt_spin_lock\w*"
    r"|percpu_\w*rwsem\w*|\w*wait_for_common\w*|wait_for_completion\w*|\w*wait_event\w*|\w*wait_on_\w+"
    r"|schedule_timeout\w*|msleep\w*|do_nanosleep|hrtimer_nanosleep|synchronize_\w+|\w*wait_rcu_gp|\w*flush_work"
    r"|__flush_workqueue|flush_workqueue|ww_mutex_lock\w*)")
_VARIANT = re.compile(r"(?:\.(?:constprop|isra|part|cold|llvm)(?:\.\d+)?)+$")
_PRIMITIVE_SUFFIX = re.compile(r"_(?:nested|slowpath|common|interruptible|killable|io)$")


def frames(text: str) -> list[str]:
    """The functions of a call trace, innermost first, without the
    unwinder's guesses ("? " frames)."""
    return [m.group(1) for line in text.splitlines() if (m := _FRAME_FUNC.match(line))]


def plain(func: str) -> str:
    """A function as its source names it: without the compiler's clone
    suffixes (``.constprop.0``, ``.isra.0``, ``.cold``)."""
    return _VARIANT.sub("", func)


def _primitive(func: str) -> str:
    """"__mutex_lock.constprop.0" and "mutex_lock_nested" are mutex_lock."""
    name = _VARIANT.sub("", func).lstrip("_")
    while (shorter := _PRIMITIVE_SUFFIX.sub("", name)) != name:
        name = shorter
    return name


def hang_signature(trace: list[str]) -> str | None:
    """Where a blocked task hangs, from its call trace (innermost first):
    ``hung in CALLER <- PRIMITIVE``, the first function below the scheduler
    and the sleeping primitive it waits in (``hung in iommufd_access_rw <-
    mutex_lock``).  None for a trace with no frame outside them."""
    prim = None
    for func in trace:
        if _BLOCKING.fullmatch(_VARIANT.sub("", func)):
            prim = func
            continue
        return f"hung in {_VARIANT.sub('', func)} <- {_primitive(prim)}" if prim else f"hung in {_VARIANT.sub('', func)}"
    return None


def tree_relative(path: str) -> str:
    """A source path as the kernel tree names it (``drivers/...``): whatever
    comes before its top-level directory is the build's."""
    return _TREE_PATH.sub("", path)


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
    for i in range(1, len(parts), 2):  # ... odd parts are source locations: the tree's own path
        parts[i] = tree_relative(parts[i])
    sig = "".join(parts).strip()
    if text and not _SRC_LOC.search(title) and not re.search(r"\+0x[0-9a-f]+/", title):
        m = _RIP.search(text)
        if m:
            sig += f" at {m.group(1)}"
    return sig
