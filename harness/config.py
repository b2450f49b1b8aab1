"""Stage 3 (config): base config + fragments -> .config, checked before building.

The tree's own ``scripts/kconfig/merge_config.sh`` and ``make olddefconfig``
produce the .config.  Afterwards every requested symbol must have the value
that was asked for; a symbol that did not stick (unmet dependency, typo)
stops the run before a build is wasted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from harness import kconfig, proc
from harness.errors import ConfigError
from harness.toolchain import Toolchain

INPUTS_FILE = ".harness-config-inputs.json"


@dataclass(frozen=True)
class ConfigRequest:
    tree: Path
    build_dir: Path
    toolchain: Toolchain
    base: str = "tinyconfig"  # a make target: tinyconfig, defconfig, ...
    fragments: tuple[Path, ...] = ()
    extra: tuple[str, ...] = ()  # CONFIG_X=y given on the command line


@dataclass(frozen=True)
class Mismatch:
    setting: kconfig.Setting
    actual: str | None  # None: not in .config at all


@dataclass(frozen=True)
class ConfigResult:
    config: Path
    sha256: str
    requested: dict[str, kconfig.Setting] = field(repr=False)
    reconfigured: bool = False


def requested_settings(req: ConfigRequest) -> dict[str, kconfig.Setting]:
    """Later inputs win: fragments in order, then --kconfig-add."""
    settings: dict[str, kconfig.Setting] = {}
    for frag in req.fragments:
        for s in kconfig.parse_fragment(frag):
            settings[s.symbol] = s
    for text in req.extra:
        s = kconfig.parse_assignment(text)
        settings[s.symbol] = s
    return settings


def _inputs_key(req: ConfigRequest, settings: dict[str, kconfig.Setting]) -> str:
    blob = json.dumps({
        "base": req.base,
        "arch": req.toolchain.arch,
        "cross": req.toolchain.cross_compile,
        "settings": [[s.symbol, s.value] for s in settings.values()],
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def check(config: Path, settings: dict[str, kconfig.Setting]) -> list[Mismatch]:
    actual = kconfig.read_config(config)
    bad = []
    for sym, s in settings.items():
        got = actual.get(sym)
        if s.value == "n":
            if got not in (None, "n"):
                bad.append(Mismatch(s, got))
        elif got != s.value:
            bad.append(Mismatch(s, got))
    return bad


def describe_mismatches(bad: list[Mismatch]) -> str:
    lines = []
    for m in bad:
        got = "not set" if m.actual in (None, "n") else m.actual
        lines.append(f"  {m.setting.symbol}={m.setting.value} (from {m.setting.source}) ended up {got}")
    return "\n".join(lines)


def configure(req: ConfigRequest, log: Path) -> ConfigResult:
    settings = requested_settings(req)
    key = _inputs_key(req, settings)
    cfg = req.build_dir / ".config"
    stamp = req.build_dir / INPUTS_FILE
    req.build_dir.mkdir(parents=True, exist_ok=True)
    reconfigured = False
    if not (cfg.exists() and stamp.exists() and _read_key(stamp) == key):
        stamp.unlink(missing_ok=True)
        mk = req.toolchain.make_argv(req.tree, req.build_dir)
        proc.run(mk + [req.base], timeout=600, log=log, error=ConfigError, what=f"make {req.base}")
        merged = req.build_dir / "harness-fragment.config"
        merged.write_text(kconfig.render(settings))
        proc.run(["bash", req.tree / "scripts/kconfig/merge_config.sh", "-m", "-O", req.build_dir, cfg, merged],
                 cwd=req.tree, env=req.toolchain.env(), timeout=600, log=log, error=ConfigError,
                 what="merge_config.sh")
        proc.run(mk + ["olddefconfig"], timeout=600, log=log, error=ConfigError, what="make olddefconfig")
        reconfigured = True
    bad = check(cfg, settings)
    if bad:
        raise ConfigError(
            f"{len(bad)} requested config symbol(s) did not get their value after olddefconfig:\n"
            + describe_mismatches(bad),
            "their dependencies are not met (or the symbol does not exist in this tree); "
            "fix the fragments in configs/ or add the missing dependencies",
            log=str(log),
        )
    if reconfigured:
        stamp.write_text(json.dumps({"key": key}))
    sha = hashlib.sha256(cfg.read_bytes()).hexdigest()
    return ConfigResult(cfg, sha, settings, reconfigured)


def _read_key(stamp: Path) -> str | None:
    try:
        return json.loads(stamp.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None
