"""How to invoke the kernel build for one architecture."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InputError, ToolMissing

# arch -> (kernel ARCH, image target, image path in the build dir, ELF machine, cross prefix)
ARCHES = {
    "x86_64": ("x86_64", "bzImage", "arch/x86/boot/bzImage", "EM_X86_64", "x86_64-linux-gnu-"),
    "arm64": ("arm64", "Image", "arch/arm64/boot/Image", "EM_AARCH64", "aarch64-linux-gnu-"),
}
HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class Toolchain:
    arch: str  # "x86_64" | "arm64"
    jobs: int = 0  # 0: one per CPU
    use_ccache: bool = True

    def __post_init__(self):
        if self.arch not in ARCHES:
            raise InputError(f"unknown architecture {self.arch!r}", f"use one of: {', '.join(ARCHES)}")

    @property
    def kernel_arch(self) -> str:
        return ARCHES[self.arch][0]

    @property
    def image_target(self) -> str:
        return ARCHES[self.arch][1]

    @property
    def image_path(self) -> str:
        return ARCHES[self.arch][2]

    @property
    def elf_machine(self) -> str:
        return ARCHES[self.arch][3]

    @property
    def native(self) -> bool:
        return HOST_ARCH.get(platform.machine()) == self.arch

    @property
    def cross_compile(self) -> str:
        return "" if self.native else ARCHES[self.arch][4]

    @property
    def cc(self) -> str:
        return self.cross_compile + "gcc"

    @property
    def ccache(self) -> bool:
        return self.use_ccache and shutil.which("ccache") is not None

    def check(self) -> None:
        if shutil.which(self.cc) is None:
            prefix = ARCHES[self.arch][4].rstrip("-")
            pkg = "gcc libc6-dev" if self.native else f"gcc-{prefix} libc6-dev-{self.kernel_arch}-cross"
            raise ToolMissing(f"compiler {self.cc} for {self.arch} is not installed",
                              f"install it with: apt-get install {pkg}  (or run 'make setup')")

    def env(self) -> dict[str, str]:
        env = {"ARCH": self.kernel_arch}
        if self.cross_compile:
            env["CROSS_COMPILE"] = self.cross_compile
        return env

    def make_argv(self, tree: Path, build_dir: Path | None = None, jobs: bool = False) -> list[str]:
        argv = ["make", "-C", str(tree), f"ARCH={self.kernel_arch}"]
        if build_dir is not None:
            argv.append(f"O={build_dir}")
        if self.cross_compile:
            argv.append(f"CROSS_COMPILE={self.cross_compile}")
        if self.ccache:
            argv.append(f"CC=ccache {self.cc}")
        if jobs:
            argv.append(f"-j{self.jobs or os.cpu_count() or 1}")
        return argv
