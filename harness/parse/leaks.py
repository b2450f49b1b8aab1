"""kmemleak's report (``/sys/kernel/debug/kmemleak`` after a scan): one
:class:`Leak` per unreferenced object, and each as a kernel report
(:class:`~harness.parse.splats.Splat` of kind ``leak``) whose signature names
the function that allocated it (``memory leak in iopt_area_add_access``), the
same for the same leak in another test, process or boot.

An object looks like this (6.12)::

    unreferenced object 0xffff888004e1e540 (size 56):
      comm "iommufd#7", pid 212, jiffies 4294898172
      hex dump (first 32 bytes):
        00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................
      backtrace (crc 8a1d3c27):
        __kmalloc_cache_noprof+0x1c4/0x370
        iopt_area_add_access+0x1a6/0x3e0
        ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from harness.parse.splat_lines import frames, plain
from harness.parse.splats import Splat

_HEAD = re.compile(r"^unreferenced object (0x[0-9a-f]+) \(size (\d+)\):", re.M)
_COMM = re.compile(r'^\s+comm "(.*)", pid (\d+), jiffies (\d+)', re.M)
# the allocator's own frames, above the code that asked for the memory
_ALLOCATOR = re.compile(
    r"_*(?:kmemleak_\w+|\w*kmalloc\w*|kmem_cache_\w+|slab_\w+|\w*kzalloc\w*|\w*kvmalloc\w*|\w*kvzalloc\w*"
    r"|\w*krealloc\w*|\w*kcalloc\w*|\w*alloc_pages\w*|\w*vmalloc\w*|\w*vzalloc\w*|kmemdup\w*|kstrdup\w*"
    r"|\w*pcpu_alloc\w*|\w*alloc_percpu\w*|mempool_alloc\w*|alloc_slab_obj_exts|\w*kmalloc_node\w*"
    r"|__alloc_skb|\w*alloc_objs)")


@dataclass(frozen=True)
class Leak:
    address: str
    size: int
    comm: str  # the task that allocated it
    pid: int
    text: str  # the object's lines as kmemleak printed them
    frames: tuple[str, ...]  # its allocation backtrace, innermost first

    @property
    def where(self) -> str:
        """The function that asked for the memory: the first frame below the
        allocator's own (``iopt_area_add_access``)."""
        for f in self.frames:
            name = plain(f)
            if not _ALLOCATOR.fullmatch(name):
                return name
        return plain(self.frames[0]) if self.frames else "an unknown function"

    def splat(self) -> Splat:
        title = f"memory leak in {self.where}: unreferenced object of {self.size} bytes (comm {self.comm})"
        return Splat("leak", title, f"memory leak in {self.where}", 0, len(self.text), self.text, False)


def group(found: list[Leak]) -> list[tuple[Splat, list[Leak]]]:
    """One report per task and allocating function, in the order of their
    first object, with the objects it stands for: a leak in a loop leaves
    dozens of objects with the same backtrace.  The report's text is its
    first object (the one decoded); the title counts them."""
    groups: dict[tuple[str, str], list[Leak]] = {}
    for leak in found:
        groups.setdefault((leak.comm, leak.where), []).append(leak)
    out = []
    for (comm, where), objs in groups.items():
        s = objs[0].splat()
        if len(objs) > 1:
            s = replace(s, title=f"memory leak in {where}: {len(objs)} unreferenced objects, the first of "
                                 f"{objs[0].size} bytes (comm {comm})")
        out.append((s, objs))
    return out


def parse(text: str) -> list[Leak]:
    """Every object of a kmemleak report, in the order printed (the order
    they were allocated)."""
    heads = list(_HEAD.finditer(text))
    leaks = []
    for i, m in enumerate(heads):
        block = text[m.start(): heads[i + 1].start() if i + 1 < len(heads) else len(text)].rstrip()
        c = _COMM.search(block)
        trace = block.split("backtrace", 1)[1] if "backtrace" in block else ""
        leaks.append(Leak(m.group(1), int(m.group(2)), c.group(1) if c else "", int(c.group(2)) if c else 0,
                          block, tuple(frames(trace))))
    return leaks
