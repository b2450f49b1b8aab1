"""Where the data folders are: ``configs/``, ``kernel-patches/``,
``qemu-images/``, ``selftests/`` and ``arches/``.

In a source checkout they sit next to the ``harness/`` package; an
installed wheel carries them inside this package (``harness/data/<name>/``),
where ``importlib.resources`` finds them, so the tool works from any
directory.  Profiles, suites and fragments of the user's own are passed by
path and never need to be in here.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

FOLDERS = ("arches", "configs", "kernel-patches", "qemu-images", "selftests")


def checkout() -> Path | None:
    """The source checkout this package runs from, or None when installed."""
    top = Path(__file__).resolve().parent.parent.parent
    return top if (top / "pyproject.toml").is_file() and (top / "harness").is_dir() else None


def folder(name: str) -> Path:
    """The data folder ``name`` (one of ``FOLDERS``) as a directory on disk."""
    if name not in FOLDERS:
        raise ValueError(f"no data folder {name!r}")
    shipped = resources.files(__name__) / name
    if shipped.is_dir():
        return Path(str(shipped))
    top = checkout()
    if top is not None and (top / name).is_dir():
        return top / name
    raise FileNotFoundError(f"the {name}/ data folder is missing from this installation of iommufd-harness")


def named_file(name: str, directory: Path) -> tuple[str, Path]:
    """(name, file) for a profile or suite given by name (``directory/<name>.toml``)
    or, for one of the user's own, by path (it ends in .toml or has a /)."""
    if name.endswith(".toml") or "/" in name:
        path = Path(name).expanduser().resolve()
        return path.stem, path
    return name, directory / f"{name}.toml"
