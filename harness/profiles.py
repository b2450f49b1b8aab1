"""vIOMMU/QEMU profiles: one declarative TOML file each in qemu-images/profiles/,
or a file of the user's passed by path (``--profile ./mine.toml``)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness import arches, data
from harness.errors import InputError

IMAGE_DIR = data.folder("qemu-images")
PROFILE_DIR = IMAGE_DIR / "profiles"
CONFIG_DIR = data.folder("configs")
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
    # on top of a board's own config (lab kernel_config "running"/"defconfig")
    board_fragments: tuple[Path, ...] = ()


def available(directory: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.toml"))


def _near(path: Path, rel: str, default_dir: Path) -> Path:
    """A file a profile names: next to a user's profile if it is there, else
    in the data folder."""
    mine = path.parent / rel
    return mine if path.parent != PROFILE_DIR and mine.exists() else default_dir / rel


def load(name: str, directory: Path = PROFILE_DIR) -> Profile:
    name, path = data.named_file(name, directory)
    if not path.is_file():
        raise InputError(f"unknown profile {name!r}", f"available profiles: {', '.join(available(directory))}")
    try:
        doc = tomllib.loads(path.read_text())
        q = doc.get("qemu")
        g = doc.get("guest", {})
        arch = arches.load(doc["arch"])
        profile = Profile(
            name=name,
            description=doc.get("description", ""),
            arch=arch.name,
            recipe=_near(path, doc["recipe"], IMAGE_DIR),
            fragments=tuple(_near(path, f, CONFIG_DIR) for f in doc["fragments"]),
            qemu=None if q is None else QemuSpec(
                q.get("binary", arch.qemu_binary), q["machine"], q.get("cpu", "max"), int(q.get("smp", 1)), str(q.get("memory", "1G")),
                tuple(q.get("devices", [])), q.get("nic", "virtio-net-pci"), q.get("cmdline", ""), q.get("qtree", "")),
            iommu=g.get("iommu", ""),
            hugepages=int(g.get("hugepages", 64)),
            path=path,
            board_fragments=tuple(_near(path, f, CONFIG_DIR) for f in doc.get("board", {}).get("fragments", [])),
        )
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"profile {path} is invalid: {type(e).__name__}: {e}") from None
    try:
        re.compile(profile.iommu)
    except re.error as e:
        raise InputError(f"profile {path}: guest.iommu is not a valid regex: {e}") from None
    for frag in profile.fragments + profile.board_fragments:
        if not frag.is_file():
            raise InputError(f"profile {path} names config fragment {frag}, which does not exist")
    if not (profile.recipe / "recipe.toml").is_file():
        raise InputError(f"profile {path} names image recipe {profile.recipe}, which does not exist")
    return profile
