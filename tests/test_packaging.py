"""The tool as a user installs it: a wheel built from this checkout, used
from another directory, finds its profiles, suites, fragments, patches and
architecture files inside the installed package."""

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_installed_wheel_works_from_any_directory(tmp_path):
    # from the checkout's files alone: a build/ left in the checkout must not
    # hide a data file the package list forgets
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(src)],
                   check=True, capture_output=True, timeout=600)
    [wheel] = wheels.glob("iommufd_harness-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    # -S: the checkout's editable install stays out of sight; the
    # dependencies come from this venv's site-packages
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), *site.getsitepackages()])}
    env.pop("IOMMUFD_HARNESS_WORK", None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def harness(*args):
        return subprocess.run([sys.executable, "-S", "-m", "harness", *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=120)

    where = subprocess.run([sys.executable, "-S", "-c", "import harness.data as d; print(d.__file__); "
                            "print(d.folder('qemu-images')); print(d.checkout())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(target)) for p in where[:2]) and where[2] == "None", where
    # every file of the data folders ships (series.toml, the QEMU lab board's recipe, ...)
    tracked = subprocess.run(["git", "ls-files", "--", "arches", "configs", "kernel-patches", "qemu-images",
                              "selftests"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    shipped = {str(p.relative_to(target / "harness/data")) for p in (target / "harness/data").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.name != "__init__.py"}
    missing = sorted(set(f for f in tracked if not f.endswith("README.md")) - shipped)
    assert not missing, f"data files missing from the wheel: {missing}"
    assert (target / "harness/reports/results.schema.json").is_file()  # results.json's contract ships
    # every package of the tool ships; the benchmark (a development tool) does not
    packages = {str(d.relative_to(REPO)) for d in (REPO / "harness").rglob("__init__.py")}
    wheel_packages = {str(d.relative_to(target)) for d in (target / "harness").rglob("__init__.py")}
    assert packages - wheel_packages == {"harness/bench/__init__.py"}, packages - wheel_packages
    res = harness("profiles")
    assert res.returncode == 0, res.stderr
    assert {line.split()[0] for line in res.stdout.splitlines()} >= {"x86_64-vtd", "arm64-smmuv3", "board-arm64"}
    res = harness("suites")
    assert res.returncode == 0 and "access" in res.stdout
    # a profile of the user's own, outside the package, naming the packaged fragments
    mine = elsewhere / "my-vtd.toml"
    mine.write_text((REPO / "qemu-images/profiles/x86_64-vtd.toml").read_text())
    res = harness("run", "--profile", str(mine), "--kernel-src", str(elsewhere / "no-tree"))
    assert res.returncode == 2 and "kernel source" in res.stderr and "does not exist" in res.stderr, res.stderr
    assert (elsewhere / "work").is_dir()  # an installed tool works in ./work


def _make_n(goal: str) -> tuple[set[str], list[str]]:
    """What 'make GOAL' would do on a fresh machine (-B: as if nothing were
    installed yet): the Debian packages it checks for, its pip installs."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under make test
    out = subprocess.run(["make", "-n", "-B", goal], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=True, env=env).stdout
    packages: set[str] = set()
    for line in out.splitlines():
        if "missing=$(for p in " in line:
            packages |= set(line.split("missing=$(for p in ", 1)[1].split(";", 1)[0].split())
    return packages, [line for line in out.splitlines() if "pip install" in line and "--upgrade pip" not in line]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_run_installs_what_running_needs_and_make_test_the_rest():
    """'make run' installs what the harness needs to run; the tests' extras
    (Debian's 6.1 source, the QEMU lab board's U-Boot and FAT tools,
    Chromium, pytest, labgrid) come with 'make test' / 'make bench' only,
    and a tool the harness says 'make setup-test' installs is installed by
    it, not by 'make setup'."""
    from harness import proc

    test_only = {"linux-source-6.1", "u-boot-qemu", "u-boot-tools", "mtools", "dosfstools", "fdisk", "chromium"}
    lab_tools = {proc.PACKAGE_FOR_TOOL[t] for t in proc.NOT_IN_SETUP}
    run_pkgs, run_pip = _make_n("run")
    assert {"build-essential", "linux-source-6.12", "qemu-system-x86", "qemu-system-arm"} <= run_pkgs
    assert not run_pkgs & (test_only | lab_tools)
    assert run_pip == [".venv/bin/pip install -q -e ."]
    for goal in ("test", "bench"):
        pkgs, pip = _make_n(goal)
        assert run_pkgs | test_only | lab_tools <= pkgs, goal
        assert pip[-1] == ".venv/bin/pip install -q -e '.[test,labgrid]'", goal
    assert _make_n("test-fast") == (set(), run_pip + [".venv/bin/pip install -q -e '.[test,labgrid]'"])


def test_a_missing_tool_names_the_make_target_that_installs_it(monkeypatch):
    from harness import proc
    from harness.errors import ToolMissing

    monkeypatch.setattr(proc.shutil, "which", lambda name: None)
    with pytest.raises(ToolMissing) as e:
        proc.require_tool("mkimage")
    assert e.value.hint == "install it with: apt-get install u-boot-tools  (or run 'make setup-test')"
    with pytest.raises(ToolMissing) as e:
        proc.require_tool("flex")
    assert e.value.hint == "install it with: apt-get install flex  (or run 'make setup')"
