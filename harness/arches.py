"""Architecture facts as data: one ``arches/<name>.toml`` per architecture.

Everything that differs between architectures (the kernel's ARCH and image,
the cross compiler, Debian's name for the userland, the ELF machine, QEMU's
binary and the machine the KVM probe boots) is read from there, so adding an
architecture takes a data file and a profile, not code.
"""

from __future__ import annotations

import platform
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from harness import data
from harness.errors import InputError


@dataclass(frozen=True)
class Arch:
    name: str  # the file's name: "x86_64", "arm64"
    description: str
    kernel_arch: str  # ARCH= for make
    srcarch: str  # arch/<srcarch>/
    image_target: str  # "bzImage", "Image"
    image_path: str  # the image in the build dir
    cross_compile: str  # CROSS_COMPILE= on a host of another architecture
    cross_packages: tuple[str, ...]  # Debian packages of that cross compiler
    elf_machine: str  # "EM_X86_64"
    debian_arch: str  # "amd64"
    triplet: str  # "x86_64-linux-gnu"
    machines: tuple[str, ...]  # uname -m on such a machine
    qemu_binary: str
    qemu_package: str
    console: str  # the serial console device ("ttyS0")
    probe_machine: str  # machine and CPU the KVM probe boots the kernel on
    probe_cpu: str  # "" for QEMU's default
    path: Path
    cold_build_steps: int = 0  # kbuild output lines of a cold kernel build (the progress estimate), 0: unknown

    @property
    def native(self) -> bool:
        """This host is of this architecture."""
        return platform.machine() in self.machines


def directory() -> Path:
    return data.folder("arches")


def available() -> list[str]:
    return sorted(p.stem for p in directory().glob("*.toml"))


@cache
def load(name: str) -> Arch:
    path = directory() / f"{name}.toml"
    if not path.is_file():
        raise InputError(f"unknown architecture {name!r}", f"use one of: {', '.join(available())}")
    try:
        d = tomllib.loads(path.read_text())
        k, t, q = d["kernel"], d["toolchain"], d["qemu"]
        return Arch(
            name=name, description=d.get("description", ""),
            kernel_arch=k["arch"], srcarch=k["srcarch"], image_target=k["image_target"], image_path=k["image_path"],
            cross_compile=t["cross_compile"], cross_packages=tuple(t["cross_packages"]),
            elf_machine=d["elf"]["machine"], debian_arch=d["debian"]["arch"], triplet=d["debian"]["triplet"],
            machines=tuple(d["host"]["machines"]),
            qemu_binary=q["binary"], qemu_package=q["package"], console=q["console"],
            probe_machine=q["probe_machine"], probe_cpu=q.get("probe_cpu", ""), path=path,
            cold_build_steps=int(k.get("cold_build_steps", 0)))
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        raise InputError(f"architecture file {path} is invalid: {type(e).__name__}: {e}") from None


def for_machine(machine: str) -> Arch | None:
    """The architecture whose machines include ``machine`` (uname -m)."""
    return next((a for a in map(load, available()) if machine in a.machines), None)


def package_for_tool(tool: str) -> str | None:
    """The Debian package that provides a per-architecture host tool (QEMU,
    a cross compiler), or None."""
    for arch in map(load, available()):
        if tool == arch.qemu_binary:
            return arch.qemu_package
        if tool == arch.cross_compile + "gcc" and arch.cross_packages:
            return arch.cross_packages[0]
    return None


def host_packages() -> list[str]:
    """What this host needs to build and boot every architecture: QEMU for
    each, a cross compiler for the others."""
    out: list[str] = []
    for arch in map(load, available()):
        out.append(arch.qemu_package)
        if not arch.native:
            out += arch.cross_packages
    return list(dict.fromkeys(out))


def foreign_debian_arches() -> list[str]:
    """dpkg architectures whose packages the guest images need from another
    architecture than the host's."""
    return [a.debian_arch for a in map(load, available()) if not a.native]


if __name__ == "__main__":  # for the Makefile: python3 -m harness.arches packages|foreign
    import sys

    what = sys.argv[1] if len(sys.argv) > 1 else ""
    print(" ".join(host_packages() if what == "packages" else foreign_debian_arches() if what == "foreign" else []))
