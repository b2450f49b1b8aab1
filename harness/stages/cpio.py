"""A minimal writer for the ``newc`` cpio format the kernel unpacks as initramfs.

Writing the archive ourselves lets an unprivileged user create device nodes
(/dev/console) and keeps images reproducible (fixed owners and times).
"""

from __future__ import annotations

import stat
from typing import BinaryIO

TRAILER = "TRAILER!!!"


class CpioWriter:
    def __init__(self, out: BinaryIO, mtime: int = 0):
        self.out = out
        self.mtime = mtime
        self.ino = 1
        self.seen: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), nlink: int = 1) -> None:
        name = name.lstrip("/") or "."
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, self.mtime, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out.write(header + encoded)
        self.out.write(b"\0" * ((4 - (len(header) + len(encoded)) % 4) % 4))
        self.out.write(data)
        self.out.write(b"\0" * ((4 - len(data) % 4) % 4))
        self.ino += 1

    def _parents(self, name: str) -> None:
        parts = name.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.directory("/" + "/".join(parts[:i]))

    def directory(self, name: str, mode: int = 0o755) -> None:
        key = name.rstrip("/") or "/"
        if key in self.seen:
            return
        self._parents(key)
        self.seen.add(key)
        self._entry(key, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._parents(name)
        self.seen.add(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._parents(name)
        self.seen.add(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._parents(name)
        self.seen.add(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def close(self) -> None:
        self._entry(TRAILER, 0, nlink=1)
        # The kernel wants archives padded to 512 bytes when concatenated.
        pos = self.out.tell()
        self.out.write(b"\0" * ((512 - pos % 512) % 512))


def read_entries(data: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of every entry in one or more concatenated archives."""
    out, off = [], 0
    while off + 110 <= len(data):
        if data[off:off + 6] != b"070701":
            if data[off] == 0:
                off += 1
                continue
            raise ValueError(f"bad cpio magic at {off}")
        fields = [int(data[off + 6 + i * 8: off + 14 + i * 8], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = off + 110
        name = data[name_start:name_start + namesize - 1].decode()
        off = name_start + namesize
        off += (4 - off % 4) % 4
        body = data[off:off + size]
        off += size
        off += (4 - off % 4) % 4
        if name != TRAILER:
            out.append((name, mode, body))
    return out
