"""The floor: a bare QEMU boot of the same kernel, machine and image whose
init runs the same tests and powers off."""

from __future__ import annotations

import time
from pathlib import Path

from harness import proc
from harness.errors import HarnessError
from harness.stages.cpio import CpioWriter
from harness.targets import qemu
from harness.targets.base import IMAGE_LAYOUT
from harness.bench.common import Kernel


FLOOR_START = "iommufd-harness floor: tests start"


FLOOR_DONE = "iommufd-harness floor: tests done"


def floor_init(tests: dict[str, list[str]], hugepages: int, lanes: int = 1) -> bytes:
    """The bare boot's init: the tests one after the other, or in ``lanes``
    shells at once (round robin, as ``run --parallel`` splits them)."""
    def lane(i: int) -> str:
        return "\n".join(f'for t in {" ".join(names[i::lanes])}; do {IMAGE_LAYOUT.selftest_dir}/{binary} -r "$t" '
                         f'>> /tmp/tests.{i}.out 2>&1; done' for binary, names in tests.items() if names[i::lanes])
    if lanes == 1:
        runs = lane(0)
    else:
        runs = "\n".join(f"(\n{lane(i)}\n) &" for i in range(lanes)) + "\nwait"
    runs += "\ncat /tmp/tests.*.out > /tmp/tests.out"
    return f"""#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug
mkdir -p /dev/hugepages && mount -t hugetlbfs hugetlbfs /dev/hugepages
echo {hugepages} > /proc/sys/vm/nr_hugepages
echo "{FLOOR_START}"
cd /tmp
{runs}
echo "{FLOOR_DONE} $(grep -c '^ok ' /tmp/tests.out) ok $(grep -c '^not ok ' /tmp/tests.out) not ok"
poweroff -f
""".encode()


def bare_boot(k: Kernel, tests: dict[str, list[str]], tmp: Path, accel: str,
              lanes: int = 1) -> tuple[float, float]:
    """(seconds to init, seconds of the tests) of one bare boot."""
    initrd = tmp / "floor-initrd.cpio"
    with open(initrd, "wb") as f:
        f.write(k.base_image.read_bytes())
        w = CpioWriter(f)
        w.file("/floor-init", floor_init(tests, k.profile.hugepages, lanes), 0o755)
        w.close()
    req = qemu.BootRequest(k.profile, k.image, initrd, tmp, accel, extra_cmdline="rdinit=/floor-init",
                           console_name="floor-console.log")
    vm = qemu.QemuVM(req)
    argv = vm.command_line(None, None)
    console = tmp / "floor-console.log"
    console.unlink(missing_ok=True)
    t0 = time.monotonic()
    p = proc.spawn(argv, tmp / "floor-qemu.log")
    started = None
    try:
        while p.poll() is None:
            if started is None and console.exists() and FLOOR_START in console.read_text(errors="replace"):
                started = time.monotonic()
            if time.monotonic() - t0 > 3600:
                raise HarnessError("bench: the bare boot did not finish within an hour")
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    end = time.monotonic()
    text = console.read_text(errors="replace")
    done = text[text.find(FLOOR_DONE):].split("\n", 1)[0] if FLOOR_DONE in text else ""
    want = sum(map(len, tests.values()))
    if started is None or f"{FLOOR_DONE} {want} ok 0 not ok" not in done:
        raise HarnessError(f"bench: the bare boot did not run the {want} tests cleanly ({done or 'no result'})",
                           log=str(console))
    return started - t0, end - started
