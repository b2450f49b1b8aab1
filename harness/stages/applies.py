"""Where a patch series applies: kernel version ranges and conditions on the tree.

A quilt directory may hold ``series.toml`` next to its ``series`` file.  It
says, for the whole series and for single patches, which kernels they are
for; a patch outside its range (or whose condition does not hold) is not
applied, and the run says so.  A patch ``series.toml`` does not name
applies to every tree::

    kernels = ">=6.2"                  # the whole series (optional)

    [[patch]]
    name = "0001-selftests-iommu-build-against-the-6.12.y-uapi.patch"
    kernels = ">=6.12, <6.13"          # comma = and; operators >= > <= < == !=
    why = "the 6.12.y selftests use uapi 6.12 lacks"   # shown when it is skipped
    # every condition must hold (on the tree before the series is applied)
    when = [
      { file = "tools/testing/selftests/iommu/iommufd_utils.h", contains = "in_data_type" },
      { file = "include/uapi/linux/iommufd.h", lacks = "in_data_type" },
    ]

Versions compare as X.Y.Z numbers; a release candidate counts as its
release (6.13-rc2 is 6.13: it has that release's features).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.errors import PatchError

FILE = "series.toml"
_OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
_CLAUSE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+){0,2})\s*$")
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def version_tuple(version: str) -> tuple[int, int, int]:
    """``6.12.117`` -> (6, 12, 117); ``6.13-rc2`` -> (6, 13, 0)."""
    m = _VERSION.match(version.strip())
    if not m:
        raise ValueError(f"not a kernel version: {version!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


@dataclass(frozen=True)
class Range:
    """A version range such as ``>=6.12, <6.13``."""

    text: str

    @classmethod
    def parse(cls, text: str, where: str) -> "Range":
        if not isinstance(text, str) or not text.strip():
            raise PatchError(f"{where}: kernels must be a string such as \">=6.12, <6.13\"")
        for clause in text.split(","):
            if not _CLAUSE.match(clause):
                raise PatchError(f"{where}: {clause.strip()!r} is not a version clause",
                                 "write clauses like '>=6.12' or '<6.13', separated by commas")
        return cls(" ".join(text.split()))

    def contains(self, version: str) -> bool:
        have = version_tuple(version)
        for clause in self.text.split(","):
            op, ver = _CLAUSE.match(clause).groups()
            if not _OPS[op](have, version_tuple(ver)):
                return False
        return True


@dataclass(frozen=True)
class Condition:
    """``file`` (relative to the tree) contains / lacks a string."""

    file: str
    text: str
    present: bool  # True: "contains", False: "lacks"

    def holds(self, tree: Path) -> bool:
        try:
            data = (tree / self.file).read_text(errors="replace")
        except OSError:
            data = None
        if data is None:
            return not self.present
        return (self.text in data) == self.present

    def describe(self) -> str:
        return f"{self.file} {'contains' if self.present else 'lacks'} {self.text!r}"


@dataclass(frozen=True)
class Applicability:
    kernels: Range | None = None
    when: tuple[Condition, ...] = ()
    why: str = ""

    def reason_not(self, tree: Path, version: str) -> str | None:
        """None when the patch is for this tree, else why it is not."""
        if self.kernels is not None and not self.kernels.contains(version):
            return f"for kernels {self.kernels.text}, this is {version}"
        for cond in self.when:
            if not cond.holds(tree):
                return f"only when {cond.describe()}"
        return None


@dataclass(frozen=True)
class SeriesRules:
    series: Applicability = Applicability()
    patches: dict | None = None  # patch name -> Applicability

    def for_patch(self, name: str) -> tuple[Applicability, ...]:
        rules = [self.series]
        if self.patches and name in self.patches:
            rules.append(self.patches[name])
        return tuple(rules)


def _conditions(items, where: str) -> tuple[Condition, ...]:
    if not isinstance(items, list):
        raise PatchError(f"{where}: 'when' must be a list of {{file = ..., contains|lacks = ...}} tables")
    out = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("file"), str) or \
                len({"contains", "lacks"} & set(item)) != 1 or set(item) - {"file", "contains", "lacks"}:
            raise PatchError(f"{where}: condition {i} must be {{file = \"PATH\", contains = \"TEXT\"}} "
                             "or {file = \"PATH\", lacks = \"TEXT\"}")
        key = "contains" if "contains" in item else "lacks"
        if not isinstance(item[key], str) or not item[key]:
            raise PatchError(f"{where}: condition {i}: {key} must be a non-empty string")
        out.append(Condition(item["file"], item[key], key == "contains"))
    return tuple(out)


def _applicability(table: dict, where: str, keys: set[str]) -> Applicability:
    unknown = set(table) - keys
    if unknown:
        raise PatchError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}",
                         f"known keys: {', '.join(sorted(keys))}")
    kernels = Range.parse(table["kernels"], where) if "kernels" in table else None
    return Applicability(kernels, _conditions(table.get("when", []), where), str(table.get("why", "")))


def load(directory: Path, names: list[str]) -> SeriesRules:
    """``series.toml`` of a quilt directory (none: every patch applies).
    ``names`` are the patches of its ``series`` file."""
    path = directory / FILE
    if not path.is_file():
        return SeriesRules()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PatchError(f"{path}: {e}", "fix the TOML syntax") from None
    series = _applicability({k: v for k, v in data.items() if k != "patch"}, str(path),
                            {"kernels", "when", "why"})
    patches = {}
    for i, entry in enumerate(data.get("patch", []), start=1):
        where = f"{path}: [[patch]] {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise PatchError(f"{where} has no name", "every [[patch]] names a patch of the series file")
        if entry["name"] not in names:
            raise PatchError(f"{where}: {entry['name']} is not in {directory / 'series'}",
                             "name a patch the series file lists")
        patches[entry["name"]] = _applicability({k: v for k, v in entry.items() if k != "name"}, where,
                                                {"kernels", "when", "why"})
    return SeriesRules(series, patches)


def to_toml(name: str, rules: tuple[Applicability, ...]) -> str:
    """A ``[[patch]]`` entry of series.toml saying what ``rules`` say together
    (all must hold), for a series written out again (a step of a walk)."""
    kernels = ", ".join(r.kernels.text for r in rules if r.kernels is not None)
    when = [c for r in rules for c in r.when]
    why = "; ".join(r.why for r in rules if r.why)
    if not kernels and not when:
        return ""

    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    out = ["[[patch]]", f"name = {q(name)}"]
    if kernels:
        out.append(f"kernels = {q(kernels)}")
    if why:
        out.append(f"why = {q(why)}")
    if when:
        conds = ", ".join(f"{{ file = {q(c.file)}, {'contains' if c.present else 'lacks'} = {q(c.text)} }}"
                          for c in when)
        out.append(f"when = [{conds}]")
    return "\n".join(out) + "\n"
