"""vIOMMU/QEMU profiles: one declarative TOML file each in qemu-images/profiles/."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InputError

REPO = Path(__file__).resolve().parent.parent
PROFILE_DIR = REPO / "qemu-images" / "profiles"
CONFIG_DIR = REPO / "configs"
IMAGE_DIR = REPO / "qemu-images"
DEFAULT_PROFILE = "x86_64-vtd"


@dataclass(frozen=True)
class QemuSpec:
    binary: str
    machine: str
    cpu: str
    smp: int
    memory: str
    devices: tuple[str, ...]
    nic: str
    cmdline: str
    qtree: str  # device name QMP's "info qtree" must show ("" for none)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    arch: str
    recipe: Path
    fragments: tuple[Path, ...]
    qemu: QemuSpec | None  # None: a profile for real boards only
    iommu: str  # regex an entry of /sys/class/iommu must match; "" for none
    hugepages: int
    path: Path


def available(directory: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.toml"))


def load(name: str, directory: Path = PROFILE_DIR) -> Profile:
    path = directory / f"{name}.toml"
    if not path.is_file():
        raise InputError(f"unknown profile {name!r}", f"available profiles: {', '.join(available(directory))}")
    try:
        data = tomllib.loads(path.read_text())
        q = data.get("qemu")
        g = data.get("guest", {})
        profile = Profile(
            name=name,
            description=data.get("description", ""),
            arch=data["arch"],
            recipe=IMAGE_DIR / data["recipe"],
            fragments=tuple(CONFIG_DIR / f for f in data["fragments"]),
            qemu=None if q is None else QemuSpec(
                q["binary"], q["machine"], q.get("cpu", "max"), int(q.get("smp", 1)), str(q.get("memory", "1G")),
                tuple(q.get("devices", [])), q.get("nic", "virtio-net-pci"), q.get("cmdline", ""), q.get("qtree", "")),
            iommu=g.get("iommu", ""),
            hugepages=int(g.get("hugepages", 64)),
            path=path,
        )
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"profile {path} is invalid: {type(e).__name__}: {e}") from None
    try:
        re.compile(profile.iommu)
    except re.error as e:
        raise InputError(f"profile {path}: guest.iommu is not a valid regex: {e}") from None
    for frag in profile.fragments:
        if not frag.is_file():
            raise InputError(f"profile {path} names config fragment {frag}, which does not exist")
    if not (profile.recipe / "recipe.toml").is_file():
        raise InputError(f"profile {path} names image recipe {profile.recipe}, which does not exist")
    return profile
