"""Explaining Kconfig symbols that did not stick, and the kconfiglib layer
that parses current kernels.

Fast tests use the tiny tree in tests/fixtures/kconfig-tree (kconfiglib does
the olddefconfig part itself: a .config that asks for a symbol whose
dependencies are unmet loads with the symbol off).  The slow ones use the
real 6.12 tree and .config from the work dir the end-to-end tests fill
(``$IOMMUFD_HARNESS_WORK``, default ./work) and skip when it is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import kconfiglib
import pytest

from harness.kconfig import compat as kconfiglib_compat
from harness.kconfig import fragments as kconfig
from harness.kconfig.explain import Explanation, explain, explain_symbol, report
from harness.kconfig.model import KconfigModel, Unavailable, load_tree, toolchain_vars
from harness.stages import config as hconfig
from harness.toolchain import Toolchain

REPO = Path(__file__).resolve().parents[2]
TREE = Path(__file__).resolve().parents[1] / "fixtures" / "kconfig-tree"
WORK = Path(os.environ.get("IOMMUFD_HARNESS_WORK", REPO / "work"))
REAL_TREE = WORK / "trees" / "debian-6.12" / "src"
REAL_CONFIG = WORK / "trees" / "debian-6.12" / "build" / "x86_64" / ".config"
PREFIX = "CONFIG_"
IOMMUFD_SYMBOLS = ["IOMMUFD", "IOMMUFD_TEST", "FAULT_INJECTION", "FAILSLAB", "INTEL_IOMMU", "IRQ_REMAP",
                   "IOMMU_IOPF", "DEBUG_FS", "HUGETLBFS", "TRANSPARENT_HUGEPAGE", "VFIO"]

# What the iommufd selftests need, on top of the fake tree's defaults.
IOMMUFD_CONFIG = """\
CONFIG_DEBUG_KERNEL=y
CONFIG_FAULT_INJECTION=y
CONFIG_FAILSLAB=y
CONFIG_IOMMUFD=y
CONFIG_IOMMUFD_TEST=y
CONFIG_FAKE_IOMMU=y
CONFIG_DEBUG_FS=y
CONFIG_HUGETLBFS=y
"""


def load(tmp_path: Path, config: str | None, arch: str = "fake", **env: str) -> KconfigModel:
    cfg = None
    if config is not None:
        cfg = tmp_path / "dot-config"
        cfg.write_text(config)
    model = load_tree(TREE, arch, cfg, env)
    assert isinstance(model, KconfigModel), model.render()
    return model


def one(model: KconfigModel, symbol: str, value: str) -> Explanation:
    (e,) = explain(model, {symbol: value})
    return e


def assert_fix_works(tmp_path: Path, config: str, symbol: str, value: str, arch: str = "fake") -> Explanation:
    """The proposed lines, added to the config, give the symbol its value."""
    e = one(load(tmp_path, config, arch), symbol, value)
    assert not e.ok and e.fix, e.render()
    fixed = config + "".join(f"{line}\n" for line in e.fix) + hconfig_line(symbol, value)
    after = load(tmp_path, fixed, arch)
    assert one(after, symbol, value).ok, f"{e.render()}\n-> still {after.value(symbol)}"
    return e


def hconfig_line(symbol: str, value: str) -> str:
    return kconfig.render({symbol: kconfig.Setting(symbol, value, "test")})


# --------------------------------------------------------------------------
# The compatibility layer


def test_plain_kconfiglib_rejects_the_modules_keyword(monkeypatch):
    """Why the compat layer exists: kconfiglib 14.1.0 stops at the bare
    'modules' line every kernel >= 5.13 has."""
    monkeypatch.setenv("srctree", str(TREE))
    monkeypatch.setenv("SRCARCH", "fake")
    with pytest.raises(kconfiglib.KconfigError, match="modules"):
        kconfiglib.Kconfig("Kconfig", warn_to_stderr=False)


def test_compat_parses_modules_and_transitional_and_macros(tmp_path, capfd):
    model = load(tmp_path, "CONFIG_MODULES=y\nCONFIG_IOMMUFD=m\n")
    kconf = model.kconf
    assert kconf.mainmenu_text == "kconfig-explain test tree 6.18.0-fake"  # KERNELVERSION from the Makefile
    assert kconf.modules.nodes and kconf.modules.name == "MODULES"
    assert model.value("IOMMUFD") == "m"  # MODULES really is the modules switch
    assert model.value("OLD_IOMMU_DEBUG") == "n" and not kconf.syms["OLD_IOMMU_DEBUG"].nodes[0].prompt
    assert model.value("SRCARCH_SEEN") == "fake"
    assert model.value("CC_HAS_WERROR") == "y" and model.value("CC_HAS_NO_SUCH_FLAG") == "n"
    assert kconf.warnings == ["Kconfig:9: parsing the kconfig-explain test tree"]  # $(info), not stdout
    assert capfd.readouterr() == ("", "")


def test_modules_off_makes_m_builtin(tmp_path):
    assert load(tmp_path, "CONFIG_IOMMUFD=m\n").value("IOMMUFD") == "y"


def test_shell_runs_in_a_scratch_dir_with_the_given_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CC_VERSION_TEXT", "from the caller's environment")
    monkeypatch.setenv("SRCARCH", "other")
    before = dict(os.environ)
    model = load(tmp_path, None)
    cwd = model.value("SHELL_CWD")
    assert cwd and Path(cwd) != Path.cwd() and not Path(cwd).exists()  # a temporary dir, removed
    assert model.value("SRCARCH_SEEN") == "fake"  # from arch, not os.environ
    version = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    assert model.value("CC_VERSION_TEXT") == version.replace("#", "")
    assert dict(os.environ) == before  # srctree was put back


def test_kbuild_env_follows_the_top_makefile():
    env = kconfiglib_compat.kbuild_env(TREE, "x86_64", {"CROSS_COMPILE": "aarch64-linux-gnu-", "CC": "ccache x"})
    assert env["SRCARCH"] == "x86" and env["ARCH"] == "x86_64"
    assert env["KERNELVERSION"] == "6.18.0-fake"
    assert env["CC"] == "ccache x" and env["LD"] == "aarch64-linux-gnu-ld"
    assert env["srctree"] == str(TREE)
    assert kconfiglib_compat.srcarch("arm64") == "arm64"


def test_missing_cross_compiler_falls_back_to_the_host_one_and_says_so(tmp_path):
    model = load(tmp_path, None, CROSS_COMPILE="no-such-cross-")
    assert model.env["CC"] == "gcc" and model.env["CROSS_COMPILE"] == ""
    assert len(model.notes) == 1 and "no-such-cross-gcc is not installed" in model.notes[0]
    assert model.value("CC_HAS_WERROR") == "y"
    assert "no-such-cross-gcc is not installed" in report(model, {"CONFIG_IOMMUFD_TEST": "y"})


@pytest.mark.parametrize("kconfig_text, reason", [
    ("config A\n\tbool \"a\"\n\tfrobnicate\n", "kconfiglib cannot parse"),
    ('source "missing/Kconfig"\n', "missing/Kconfig"),
    ('$(error-if,y,C compiler not found)\n', "C compiler not found"),
])
def test_parse_failures_degrade_to_one_line(tmp_path, kconfig_text, reason):
    (tmp_path / "Kconfig").write_text(kconfig_text)
    model = load_tree(tmp_path, "fake", None, {})
    assert isinstance(model, Unavailable)
    assert reason in model.reason and "\n" not in model.reason
    text = report(model, {"CONFIG_A": "y"})
    assert text.startswith("no explanation available: ") and "\n" not in text
    assert explain_symbol(model, "CONFIG_A") == text


def test_missing_tree_or_config_degrade(tmp_path):
    assert "does not exist" in load_tree(tmp_path / "nope", "x86_64", None, {}).reason
    missing = load_tree(TREE, "fake", tmp_path / "no.config", {})
    assert isinstance(missing, Unavailable) and "cannot load" in missing.reason


def test_a_failing_explanation_does_not_hide_the_others(tmp_path, monkeypatch):
    from harness.kconfig import explain as kconfig_explain

    model = load(tmp_path, "")
    real = kconfig_explain._explain_one

    def flaky(m, symbol, value):
        if symbol == "CONFIG_FAILSLAB":
            raise AttributeError("odd expression")
        return real(m, symbol, value)

    monkeypatch.setattr(kconfig_explain, "_explain_one", flaky)
    bad, good = explain(model, {"CONFIG_FAILSLAB": "y", "CONFIG_IOMMUFD_TEST": "y"})
    assert "no explanation available: AttributeError: odd expression" in bad.note
    assert good.fix


# --------------------------------------------------------------------------
# Explanations on the fake tree


def test_unmet_dependency_names_the_value_and_the_fix(tmp_path):
    config = IOMMUFD_CONFIG.replace("CONFIG_FAULT_INJECTION=y\n", "")
    e = one(load(tmp_path, config), "CONFIG_IOMMUFD_TEST", "y")
    assert (e.known, e.actual) == (True, "n")
    assert e.depends == ("DEBUG_KERNEL [=y] && FAULT_INJECTION [=n] && RUNTIME_TESTING_MENU [=y] "
                         "&& IOMMUFD [=y] && IOMMU_SUPPORT [=y]")
    assert e.fix == ("CONFIG_FAULT_INJECTION=y",)
    assert e.render() == (
        "CONFIG_IOMMUFD_TEST=y was requested but it is not set:\n"
        "  IOMMUFD_TEST depends on DEBUG_KERNEL [=y] && FAULT_INJECTION [=n] && RUNTIME_TESTING_MENU [=y] "
        "&& IOMMUFD [=y] && IOMMU_SUPPORT [=y]\n"
        "  fix: add CONFIG_FAULT_INJECTION=y")


def test_fix_follows_dependencies_down(tmp_path):
    e = assert_fix_works(tmp_path, "", "CONFIG_IOMMUFD_TEST", "y")
    assert set(e.fix) == {"CONFIG_IOMMUFD=y", "CONFIG_DEBUG_KERNEL=y", "CONFIG_FAULT_INJECTION=y"}
    e = assert_fix_works(tmp_path, "", "CONFIG_FAILSLAB", "y")
    assert e.fix == ("CONFIG_FAULT_INJECTION=y", "CONFIG_DEBUG_KERNEL=y")


def test_fix_is_checked_and_completed(tmp_path):
    # IOMMUFD=y first makes "VFIO=IOMMUFD" false; the check finds VFIO=y.
    e = assert_fix_works(tmp_path, "", "CONFIG_IOMMUFD_VFIO_GLUE", "y")
    assert set(e.fix) == {"CONFIG_IOMMUFD=y", "CONFIG_VFIO=y"}
    # Deeper than the first search: the check goes further, and says nothing
    # about where the first search stopped.
    e = assert_fix_works(tmp_path, "", "CONFIG_CHAIN_1", "y")
    assert set(e.fix) == {f"CONFIG_CHAIN_{i}=y" for i in range(2, 8)}
    assert e.note == ""


def test_a_proposal_kconfiglib_rejects_is_flagged(tmp_path, monkeypatch):
    from harness.kconfig import planner

    monkeypatch.setattr(planner, "plan", lambda model, sym, goal, depth: planner.Plan(("CONFIG_EXPERT=y",)))
    model = load(tmp_path, IOMMUFD_CONFIG.replace("CONFIG_FAULT_INJECTION=y\n", ""))
    e = one(model, "CONFIG_IOMMUFD_TEST", "y")
    assert e.fix == ("CONFIG_EXPERT=y",)
    assert "kconfiglib still gives IOMMUFD_TEST=n with these lines" in e.note
    assert model.value("EXPERT") == "n" and not model.kconf.warnings[1:]  # the check left no trace


def test_fix_takes_the_open_branch_of_an_or(tmp_path):
    # On "other", nothing provides ARCH_SUPPORTS_HUGETLBFS: EXPERT is the way.
    e = assert_fix_works(tmp_path, "", "CONFIG_HUGETLBFS", "y", arch="other")
    assert e.fix == ("CONFIG_EXPERT=y",)
    assert "ARCH_SUPPORTS_HUGETLBFS [=n] || EXPERT [=n]" in e.depends


@pytest.mark.parametrize("symbol, value, fix", [
    ("CONFIG_IOMMU_API", "n", {"# CONFIG_FAKE_IOMMU is not set", "# CONFIG_IOMMUFD is not set"}),
    ("CONFIG_IOMMU_DEBUGFS", "n", {"# CONFIG_FAKE_IOMMU is not set"}),
    ("CONFIG_HUGETLB_PAGE", "n", {"# CONFIG_HUGETLBFS is not set"}),
    ("CONFIG_IOMMUFD", "m", {"CONFIG_MODULES=y"}),
])
def test_proposed_fix_really_fixes(tmp_path, symbol, value, fix):
    e = assert_fix_works(tmp_path, IOMMUFD_CONFIG, symbol, value)
    assert set(e.fix) == fix


def test_m_for_a_bool_proposes_y(tmp_path):
    e = one(load(tmp_path, IOMMUFD_CONFIG), "CONFIG_FAKE_IOMMU", "m")
    assert e.fix == ("CONFIG_FAKE_IOMMU=y",) and "FAKE_IOMMU is a bool: it can be y or n, not m" in e.note


def test_select_and_imply_are_named_with_values(tmp_path):
    model = load(tmp_path, IOMMUFD_CONFIG)
    e = one(model, "CONFIG_IOMMU_API", "n")
    assert e.forced_by == ("selected by FAKE_IOMMU [=y] && IOMMU_SUPPORT [=y]",
                           "selected by IOMMUFD [=y] && IOMMU_SUPPORT [=y]")
    assert "IOMMU_API has no prompt" in e.note and "a fragment line for it has no effect" in e.note
    e = one(model, "CONFIG_IOMMU_DEBUGFS", "n")
    assert e.forced_by == ("implied by FAKE_IOMMU [=y] && IOMMU_SUPPORT [=y]",)
    assert "  IOMMU_DEBUGFS is implied by FAKE_IOMMU [=y] && IOMMU_SUPPORT [=y]" in e.render()


def test_typo_is_unknown_with_close_matches(tmp_path):
    e = one(load(tmp_path, IOMMUFD_CONFIG), "CONFIG_IOMMUFD_TSET", "y")
    assert not e.known and e.actual is None and not e.fix
    assert e.close_matches[0] == "CONFIG_IOMMUFD_TEST"
    assert e.render().startswith("CONFIG_IOMMUFD_TSET=y: no symbol IOMMUFD_TSET in this tree; "
                                 "did you mean CONFIG_IOMMUFD_TEST")


def test_symbol_of_another_architecture(tmp_path):
    model = load(tmp_path, IOMMUFD_CONFIG)
    e = one(model, "CONFIG_OTHER_SMMU", "y")
    assert not e.known and "arch/other/Kconfig" in e.note and "ARCH=fake" in e.note
    e = one(model, "CONFIG_OTHER_SMMU_SVA", "y")  # exists, but needs it
    assert e.known and not e.fix
    assert "a fragment cannot fix this: OTHER_SMMU is not defined for ARCH=fake" in e.note


def test_arch_provided_symbols_stop_the_search(tmp_path):
    model = load(tmp_path, IOMMUFD_CONFIG)
    e = one(model, "CONFIG_FAKE_IOMMU_SVM", "y")
    assert "ARCH_HAS_IOPF [=n]" in e.depends and not e.fix
    assert "a fragment cannot fix this" in e.note and "provided by the architecture" in e.note
    assert "arch/fake/Kconfig:13" in e.note
    e = one(model, "CONFIG_IOMMU_IOPF", "y")  # promptless, only FAKE_IOMMU_SVM selects it
    assert not e.fix and "ARCH_HAS_IOPF" in e.note


def test_prompt_hidden_by_the_build_environment(tmp_path):
    e = one(load(tmp_path, IOMMUFD_CONFIG), "CONFIG_64BIT", "n")
    assert not e.fix
    assert 'shown only if "fake" = "fake32"' in e.note
    assert "fixed by the tree and the build environment (ARCH=fake" in e.note


def test_value_out_of_range(tmp_path):
    e = one(load(tmp_path, IOMMUFD_CONFIG + "CONFIG_NR_HUGEPAGES=100\n"), "CONFIG_NR_HUGEPAGES", "100")
    assert e.actual == "8" and "range 0..64" in e.note


def test_symbols_that_stuck_are_ok(tmp_path):
    model = load(tmp_path, IOMMUFD_CONFIG)
    settings = {s.symbol: s.value for s in kconfig.parse_fragment(_write(tmp_path, IOMMUFD_CONFIG))}
    assert all(e.ok and not e.fix for e in explain(model, settings))
    assert one(model, "CONFIG_EXPERT", "n").ok  # n matches "not set"


def test_explains_what_config_check_reports(tmp_path):
    """The harness's own check and this module agree on what did not stick."""
    requested = IOMMUFD_CONFIG.replace("CONFIG_DEBUG_KERNEL=y\n", "") + "CONFIG_IOMMUFD_TSET=y\n"
    model = load(tmp_path, requested)
    written = tmp_path / "olddefconfig"
    model.kconf.write_config(str(written))  # what olddefconfig would have written
    settings = {s.symbol: s for s in kconfig.parse_fragment(_write(tmp_path, requested))}
    bad = hconfig.check(written, settings)
    assert {m.setting.symbol for m in bad} == {"CONFIG_FAULT_INJECTION", "CONFIG_FAILSLAB",
                                               "CONFIG_IOMMUFD_TEST", "CONFIG_IOMMUFD_TSET"}
    text = report(model, {m.setting.symbol: m.setting.value for m in bad})
    assert text.count("fix: add CONFIG_DEBUG_KERNEL=y") == 1  # FAULT_INJECTION's
    assert "did you mean CONFIG_IOMMUFD_TEST?" in text
    for e in explain(model, {m.setting.symbol: m.setting.value for m in bad}):
        assert not e.ok
        assert not e.known or "CONFIG_DEBUG_KERNEL=y" in e.fix


def test_explain_symbol(tmp_path):
    model = load(tmp_path, IOMMUFD_CONFIG.replace("CONFIG_FAULT_INJECTION=y\n", ""))
    text = explain_symbol(model, "IOMMUFD_TEST")
    assert text.splitlines()[0] == "CONFIG_IOMMUFD_TEST (bool) = n"
    assert 'defined at drivers/iommu/Kconfig:36 "IOMMU Userspace API Test support"' in text
    assert "  depends on DEBUG_KERNEL [=y] && FAULT_INJECTION [=n]" in text
    assert "  selects IOMMUFD_DRIVER\n" in text and "  default n\n" in text
    assert text.endswith("  to get CONFIG_IOMMUFD_TEST=y:\n    add CONFIG_FAULT_INJECTION=y")
    text = explain_symbol(model, "CONFIG_IOMMU_API")
    assert "no prompt" in text and "  selected by FAKE_IOMMU [=y] && IOMMU_SUPPORT [=y]" in text
    assert "to get" not in text  # already y
    assert "did you mean CONFIG_IOMMUFD_TEST" in explain_symbol(model, "CONFIG_IOMMUFD_TSET")


def test_toolchain_vars_match_the_make_command_line():
    tc = Toolchain("arm64", use_ccache=False)
    assert toolchain_vars(tc) == {"ARCH": "arm64", **({"CROSS_COMPILE": "aarch64-linux-gnu-"}
                                                      if tc.cross_compile else {})}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fragment.config"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------
# The real 6.12 tree (slow: parsing runs ~100 compiler probes)


@pytest.fixture(scope="module")
def real_tree() -> None:
    """The patched real tree and its configured .config, made with the
    harness's own config stage when an earlier run has not left them (no
    build: source, patches and config take well under a minute)."""
    if (REAL_TREE / "Kconfig").is_file() and REAL_CONFIG.is_file():
        return
    res = subprocess.run([sys.executable, "-m", "harness", "config", "--quiet", "--work", str(WORK)],
                         cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr
    assert (REAL_TREE / "Kconfig").is_file() and REAL_CONFIG.is_file()


needs_real_tree = pytest.mark.usefixtures("real_tree")
needs_real_source = pytest.mark.usefixtures("real_tree")


@pytest.fixture(scope="module")
def x86_model(real_tree) -> KconfigModel:
    model = load_tree(REAL_TREE, "x86_64", REAL_CONFIG, toolchain_vars(Toolchain("x86_64")))
    assert isinstance(model, KconfigModel), model.render()
    return model


def _disagreements(model: KconfigModel, config: Path) -> dict[str, tuple[str, str | None]]:
    """Every symbol of the real .config whose kconfiglib value differs."""
    real = kconfig.read_config(config)
    out = {}
    for name, value in real.items():
        sym = model.symbol(name)
        mine = None if sym is None else (f'"{kconfiglib.escape(sym.str_value)}"'
                                         if sym.orig_type is kconfiglib.STRING else sym.str_value)
        if mine != value and not (value == "n" and mine in ("n", "")):
            out[name] = (value, mine)
    return out


@pytest.mark.slow
@needs_real_tree
def test_real_x86_values_agree_with_olddefconfig(x86_model):
    real = kconfig.read_config(REAL_CONFIG)
    for name in IOMMUFD_SYMBOLS:
        assert x86_model.value(name) == real.get(PREFIX + name, "n"), name
    assert x86_model.value("IOMMUFD_TEST") == "y"
    assert _disagreements(x86_model, REAL_CONFIG) == {}
    assert x86_model.seconds < 60


@pytest.mark.slow
@needs_real_tree
def test_real_typo_has_the_right_close_match(x86_model):
    e = one(x86_model, "CONFIG_IOMMUFD_TSET", "y")
    assert not e.known and "CONFIG_IOMMUFD_TEST" in e.close_matches
    e = one(x86_model, "CONFIG_ARM_SMMU_V3", "y")
    assert e.known and not e.fix and "ARM64 is not defined for ARCH=x86_64" in e.note


@pytest.mark.slow
@needs_real_tree
def test_real_olddefconfig_mismatch_is_explained(tmp_path):
    """The whole path: a fragment without FAULT_INJECTION, the tree's own
    olddefconfig, the harness's check, then the explanation and its fix."""
    tc = Toolchain("x86_64")
    build = tmp_path / "build"
    build.mkdir()
    cfg = build / ".config"
    cfg.write_text(REAL_CONFIG.read_text().replace("CONFIG_FAULT_INJECTION=y\n",
                                                   "# CONFIG_FAULT_INJECTION is not set\n"))
    subprocess.run(tc.make_argv(REAL_TREE, build) + ["olddefconfig"], check=True, capture_output=True,
                   timeout=600)
    fragment = (REPO / "configs" / "iommufd.config").read_text().replace("CONFIG_FAULT_INJECTION=y\n", "")
    settings = {s.symbol: s for s in kconfig.parse_fragment(_write(tmp_path, fragment))}
    bad = hconfig.check(cfg, settings)
    assert "CONFIG_IOMMUFD_TEST" in {m.setting.symbol for m in bad}

    model = load_tree(REAL_TREE, "x86_64", cfg, toolchain_vars(tc))
    assert isinstance(model, KconfigModel), model.render()
    assert _disagreements(model, cfg) == {}
    explanations = {e.symbol: e for e in explain(model, {m.setting.symbol: m.setting.value for m in bad})}
    e = explanations["CONFIG_IOMMUFD_TEST"]
    assert "FAULT_INJECTION [=n]" in e.depends and "DEBUG_KERNEL [=y]" in e.depends
    assert e.fix == ("CONFIG_FAULT_INJECTION=y",)
    assert "IOMMUFD_TEST depends on " in e.render()
    assert all(x.fix == ("CONFIG_FAULT_INJECTION=y",) for x in explanations.values()), \
        "\n".join(x.render() for x in explanations.values())


@pytest.fixture(scope="module")
def arm64_config(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """tinyconfig + the guest fragments + olddefconfig for ARCH=arm64, made
    by the tree's own make: with the cross compiler when it is installed,
    else with the host gcc (the kernel's Kconfig accepts any gcc)."""
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    cross = "aarch64-linux-gnu-" if shutil.which("aarch64-linux-gnu-gcc") else ""
    make_vars = {"ARCH": "arm64", **({"CROSS_COMPILE": cross} if cross else {})}
    tmp = tmp_path_factory.mktemp("arm64")
    build = tmp / "build"
    make = ["make", "-s", "-C", str(REAL_TREE), f"O={build}", *(f"{k}={v}" for k, v in make_vars.items())]
    res = subprocess.run(make + ["tinyconfig"], capture_output=True, text=True, timeout=600, check=False)
    if res.returncode and "not found" in res.stderr:
        pytest.skip(f"the tree's Kconfig cannot run for arm64 here: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0, res.stderr
    fragment = tmp / "guest.config"
    fragment.write_text((REPO / "configs" / "base.config").read_text()
                        + (REPO / "configs" / "iommufd.config").read_text())
    subprocess.run(["bash", "scripts/kconfig/merge_config.sh", "-m", "-O", str(build), str(build / ".config"),
                    str(fragment)], cwd=REAL_TREE, env={**os.environ, **make_vars}, check=True,
                   capture_output=True, timeout=600)
    subprocess.run(make + ["olddefconfig"], check=True, capture_output=True, timeout=600)
    cfg = build / ".config"
    assert "CONFIG_ARM64=y" in cfg.read_text()
    return cfg, make_vars


def _assert_iommufd_symbols_agree(model: KconfigModel, cfg: Path) -> None:
    real = kconfig.read_config(cfg)
    for name in IOMMUFD_SYMBOLS:  # INTEL_IOMMU, IRQ_REMAP: not arm64 symbols
        assert model.value(name) == real.get(PREFIX + name, "n" if model.symbol(name) else None), name
    assert model.value("IOMMUFD_TEST") == "y"


@pytest.mark.slow
@needs_real_source
def test_real_arm64_values_agree_with_olddefconfig(arm64_config):
    cfg, make_vars = arm64_config
    model = load_tree(REAL_TREE, "arm64", cfg, make_vars)
    assert isinstance(model, KconfigModel), model.render()
    assert model.env["SRCARCH"] == "arm64" and model.notes == ()
    _assert_iommufd_symbols_agree(model, cfg)
    assert _disagreements(model, cfg) == {}
    e = one(model, "CONFIG_INTEL_IOMMU", "y")  # defined everywhere, depends on X86
    assert e.known and not e.fix and "a fragment cannot fix this: X86 is not defined for ARCH=arm64" in e.note
    e = one(model, "CONFIG_X86_64", "y")
    assert not e.known and "arch/x86/Kconfig" in e.note
    assert one(model, "CONFIG_IOMMUFD_TSET", "y").close_matches[0] == "CONFIG_IOMMUFD_TEST"


@pytest.mark.slow
@needs_real_source
def test_real_arm64_without_the_cross_compiler(arm64_config):
    """A missing cross compiler still gives a model: the compiler probes run
    with the host gcc, the iommufd symbols are right, and it is said."""
    cfg, _ = arm64_config
    model = load_tree(REAL_TREE, "arm64", cfg, {"CROSS_COMPILE": "no-such-cross-"})
    assert isinstance(model, KconfigModel), model.render()
    assert model.notes and "no-such-cross-gcc is not installed" in model.notes[0]
    _assert_iommufd_symbols_agree(model, cfg)
