"""Reading and writing Kconfig fragments and .config files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Setting:
    symbol: str  # with the CONFIG_ prefix
    value: str  # "y", "m", "n", a number or a quoted string
    source: str  # "file:line" or "--kconfig-add"


def parse_line(line: str) -> tuple[str, str] | None:
    line = line.strip()
    m = _SET.match(line)
    if m:
        return m.group(1), m.group(2)
    m = _UNSET.match(line)
    if m:
        return m.group(1), "n"
    return None


def parse_fragment(path: Path) -> list[Setting]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config fragment {path}: {e.strerror}") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        parsed = parse_line(stripped)
        if parsed is None:
            if stripped.startswith("#"):
                continue
            raise ConfigError(f"{path}:{lineno}: not a Kconfig setting: {stripped!r}",
                              "fragment lines look like CONFIG_FOO=y or '# CONFIG_FOO is not set'")
        out.append(Setting(parsed[0], parsed[1], f"{path}:{lineno}"))
    return out


def parse_assignment(text: str, source: str = "--kconfig-add") -> Setting:
    parsed = parse_line(text)
    if parsed is None:
        raise ConfigError(f"{source} {text!r} is not a Kconfig setting", "use the form CONFIG_FOO=y (or =m, =n, =\"value\")")
    return Setting(parsed[0], parsed[1], source)


def read_config(path: Path) -> dict[str, str]:
    """Symbol -> value of a .config ("n" for '# ... is not set')."""
    values = {}
    for line in path.read_text(errors="replace").splitlines():
        parsed = parse_line(line)
        if parsed:
            values[parsed[0]] = parsed[1]
    return values


def render(settings: dict[str, Setting]) -> str:
    lines = []
    for sym in settings:
        s = settings[sym]
        lines.append(f"# {sym} is not set" if s.value == "n" else f"{sym}={s.value}")
    return "\n".join(lines) + "\n"
