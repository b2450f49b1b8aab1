"""Stage 3 (config): base config + fragments -> .config, checked before building.

The tree's own ``scripts/kconfig/merge_config.sh`` and ``make olddefconfig``
produce the .config.  Afterwards every requested symbol must have the value
that was asked for; a symbol that did not stick (unmet dependency, typo)
stops the run before a build is wasted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from harness import proc
from harness.errors import ConfigError
from harness.kconfig import fragments as kconfig
from harness.toolchain import Toolchain

INPUTS_FILE = ".harness-config-inputs.json"


@dataclass(frozen=True)
class ConfigRequest:
    """Inputs by precedence, lowest first: the base (a make target such as
    tinyconfig, or ``base_config``, a full .config of the user's), the
    profile's fragments from configs/, the debug kernels' (configs/debug/),
    the tree's own selftest config, then the user's --fragment files and
    --kconfig-add settings."""

    tree: Path
    build_dir: Path
    toolchain: Toolchain
    base: str = "tinyconfig"
    fragments: tuple[Path, ...] = ()  # configs/ for the profile
    extra: tuple[str, ...] = ()  # CONFIG_X=y given on the command line
    tree_fragments: tuple[Path, ...] = ()  # the tree's tools/testing/selftests/iommu/config
    user_fragments: tuple[Path, ...] = ()  # --fragment
    base_config: Path | None = None  # --config: a full .config instead of ``base``
    kconfig_generation: str = ""  # changes whenever a Kconfig file of the tree changes (a patch, an edit)
    debug_fragments: tuple[Path, ...] = ()  # configs/debug/ for --debug
    lsmod: Path | None = None  # a board's lsmod: its loaded modules become built in (make localyesconfig)

    def levels(self) -> list[tuple[str, list[kconfig.Setting]]]:
        user = [s for f in self.user_fragments for s in kconfig.parse_fragment(f)]
        user += [kconfig.parse_assignment(t) for t in self.extra]
        return [
            ("configs/", [s for f in self.fragments for s in kconfig.parse_fragment(f)]),
            ("--debug", [s for f in self.debug_fragments for s in kconfig.parse_fragment(f)]),
            ("the tree's selftest config", [s for f in self.tree_fragments for s in kconfig.parse_fragment(f)]),
            ("command line", user),
        ]


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
    overrides: tuple[str, ...] = ()  # "CONFIG_X: a.config:3 (=y) overridden by b.config:7 (=n)"


def resolve(req: ConfigRequest) -> tuple[dict[str, kconfig.Setting], list[str]]:
    """The settings to request, and the overrides between levels.  Two
    inputs of the same level that disagree are an error: nothing says which
    one was meant."""
    settings: dict[str, kconfig.Setting] = {}
    overrides: list[str] = []
    for level, items in req.levels():
        seen: dict[str, kconfig.Setting] = {}
        for item in items:
            prev = seen.get(item.symbol)
            if prev is not None and prev.value != item.value:
                raise ConfigError(
                    f"conflicting settings for {item.symbol} ({level}):\n"
                    f"  {prev.source}: {item.symbol}={prev.value}\n  {item.source}: {item.symbol}={item.value}",
                    "keep one of them; inputs of the same level must agree")
            seen[item.symbol] = item
        for sym, item in seen.items():
            old = settings.get(sym)
            if old is not None and old.value != item.value:
                overrides.append(f"{sym}: {old.source} (={old.value}) overridden by {item.source} (={item.value})")
            settings[sym] = item
    return settings, overrides


def _inputs_key(req: ConfigRequest, settings: dict[str, kconfig.Setting]) -> str:
    blob = json.dumps({
        "base": req.base,
        "base_config": hashlib.sha256(req.base_config.read_bytes()).hexdigest() if req.base_config else None,
        "arch": req.toolchain.arch,
        "cross": req.toolchain.cross_compile,
        "settings": [[s.symbol, s.value] for s in settings.values()],
        "kconfig": req.kconfig_generation,
        **({"lsmod": hashlib.sha256(req.lsmod.read_bytes()).hexdigest()} if req.lsmod else {}),
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
    settings, overrides = resolve(req)
    if req.base_config is not None and not req.base_config.is_file():
        raise ConfigError(f"--config {req.base_config} does not exist", "pass a full kernel .config")
    key = _inputs_key(req, settings)
    cfg = req.build_dir / ".config"
    stamp = req.build_dir / INPUTS_FILE
    req.build_dir.mkdir(parents=True, exist_ok=True)
    reconfigured = False
    if not (cfg.exists() and stamp.exists() and _read_key(stamp) == key):
        stamp.unlink(missing_ok=True)
        mk = req.toolchain.make_argv(req.tree, req.build_dir)
        if req.base_config is not None:
            shutil.copyfile(req.base_config, cfg)
        else:
            proc.run(mk + [req.base], timeout=600, log=log, error=ConfigError, what=f"make {req.base}")
        if req.lsmod is not None:
            # what the board runs stays, built in, so the trial kernel needs
            # neither the board's initrd nor modules; the rest goes
            proc.run(mk + [f"LSMOD={req.lsmod}", "localyesconfig"], timeout=600, log=log, error=ConfigError,
                     what="make localyesconfig (the board's loaded modules built in)")
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
            + describe_mismatches(bad) + "\n" + explain_mismatches(req, cfg, bad),
            "fix the fragments (or --kconfig-add) as suggested; nothing was built",
            log=str(log),
        )
    if reconfigured:
        stamp.write_text(json.dumps({"key": key}))
    sha = hashlib.sha256(cfg.read_bytes()).hexdigest()
    return ConfigResult(cfg, sha, settings, reconfigured, tuple(overrides))


def model(req: ConfigRequest, cfg: Path):
    """kconfiglib's view of the tree and ``cfg`` (or why there is none)."""
    from harness.kconfig import model as kconfig_model

    return kconfig_model.load_tree(req.tree, req.toolchain.kernel_arch, cfg,
                                   kconfig_model.toolchain_vars(req.toolchain))


def explain_mismatches(req: ConfigRequest, cfg: Path, bad: list[Mismatch]) -> str:
    """Why each symbol did not stick and what would fix it (kconfiglib);
    never fails: without a model it says why there is no explanation."""
    from harness.kconfig import explain as kconfig_explain

    try:
        return kconfig_explain.report(model(req, cfg), {m.setting.symbol: m.setting.value for m in bad})
    except Exception as e:  # noqa: BLE001 - an explanation must never hide the real error
        return f"no explanation available: {type(e).__name__}: {e}"


def _read_key(stamp: Path) -> str | None:
    try:
        return json.loads(stamp.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None
