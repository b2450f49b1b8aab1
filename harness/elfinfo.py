"""ELF facts read with pyelftools: build-ids, architectures, needed libraries.

pyelftools is imported on first use: a run whose kernel and image are
already built reads no ELF file before its VM starts."""

from __future__ import annotations

import struct
from pathlib import Path

from harness.errors import BuildError

NT_GNU_BUILD_ID = 3


def _open(path: Path, what: str):
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        f = open(path, "rb")
    except OSError as e:
        raise BuildError(f"{what} {path} cannot be read: {e.strerror}") from None
    try:
        return f, ELFFile(f)
    except ELFError as e:
        f.close()
        raise BuildError(f"{what} {path} is not an ELF file ({e})") from None


def build_id(path: Path) -> str:
    """The GNU build-id of an ELF file (vmlinux), as hex."""
    f, elf = _open(path, "ELF file")
    with f:
        for section in elf.iter_sections():
            if section.header.sh_type != "SHT_NOTE":
                continue
            for note in section.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                    return note["n_desc"]
    raise BuildError(f"{path} has no GNU build-id note", "the kernel links with --build-id by default; check LDFLAGS")


def build_id_from_notes(data: bytes) -> str | None:
    """The build-id in the raw notes the running kernel exposes in /sys/kernel/notes."""
    off = 0
    while off + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, off)
        off += 12
        name = data[off:off + namesz].rstrip(b"\0")
        off += (namesz + 3) & ~3
        desc = data[off:off + descsz]
        off += (descsz + 3) & ~3
        if ntype == NT_GNU_BUILD_ID and name == b"GNU":
            return desc.hex()
    return None


def machine(path: Path) -> str:
    f, elf = _open(path, "binary")
    with f:
        return elf["e_machine"]


def check_binary(path: Path, want_machine: str, static: bool = False, what: str = "binary") -> None:
    """Fail clearly when a binary would not run on the target (wrong architecture)."""
    f, elf = _open(path, what)
    with f:
        got = elf["e_machine"]
        if got != want_machine:
            raise BuildError(f"{what} {path} is built for {got}, but the target needs {want_machine}",
                             "rebuild it with the target's cross compiler")
        if static and any(seg["p_type"] == "PT_INTERP" for seg in elf.iter_segments()):
            raise BuildError(f"{what} {path} is dynamically linked; the guest image needs it static")


def needed(path: Path) -> tuple[str | None, list[str]]:
    """(program interpreter, DT_NEEDED libraries) of a dynamic ELF file."""
    from elftools.elf.dynamic import DynamicSection

    f, elf = _open(path, "binary")
    with f:
        interp = None
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_INTERP":
                interp = seg.get_interp_name()
        libs = []
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                libs += [t.needed for t in section.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
        return interp, libs
