"""source -> patches -> config -> build on the fake kernel tree (milliseconds)."""

import os
import shutil
from pathlib import Path

import pytest

from harness import elfinfo, profiles
from harness.errors import BuildError, ConfigError, SourceError
from harness.errors import InputError
from harness.stages import build
from harness.stages import config
from harness.stages import source
from harness.toolchain import Toolchain
from harness.workdir import WorkDir, WorkLock


def _configure(tree, bdir, extra=()):
    prof = profiles.load("x86_64-vtd")
    req = config.ConfigRequest(tree, bdir, Toolchain("x86_64"), "tinyconfig", prof.fragments, tuple(extra))
    return config.configure(req, bdir / "config.log")


def test_source_sync_keeps_the_user_tree_and_skips_build_outputs(fake_kernel, tmp_path):
    (fake_kernel / "drivers/iommu/iommufd/main.o").write_text("object")
    (fake_kernel / ".config").write_text("CONFIG_X=y\n")
    work = WorkDir(tmp_path / "w").prepare()
    tree = source.prepare(source.SourceRequest(fake_kernel), work)
    assert tree.version == "6.12.99-fake"
    assert (tree.path / "drivers/iommu/iommufd/main.c").exists()
    assert not (tree.path / "drivers/iommu/iommufd/main.o").exists()
    assert not (tree.path / ".config").exists()
    assert "drivers/iommu/iommufd/main.c" in tree.changed
    # unchanged origin: nothing to copy again
    assert source.prepare(source.SourceRequest(fake_kernel), work).changed == ()
    (fake_kernel / "Kconfig").write_text("# changed\n")
    assert source.prepare(source.SourceRequest(fake_kernel), work).changed == ("Kconfig",)


def test_not_a_kernel_tree(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        source.user_origin(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="not a Linux kernel tree"):
        source.user_origin(tmp_path / "empty")


def test_config_is_checked_and_not_redone_when_inputs_are_unchanged(fake_kernel, tmp_path):
    bdir = tmp_path / "b"
    first = _configure(fake_kernel, bdir)
    assert first.reconfigured
    values = (bdir / ".config").read_text()
    assert "CONFIG_IOMMUFD_TEST=y" in values
    mtime = os.stat(bdir / ".config").st_mtime_ns
    second = _configure(fake_kernel, bdir)
    assert not second.reconfigured and second.sha256 == first.sha256
    assert os.stat(bdir / ".config").st_mtime_ns == mtime


def test_symbol_that_does_not_stick_stops_before_the_build(fake_kernel, tmp_path):
    with pytest.raises(ConfigError) as e:
        _configure(fake_kernel, tmp_path / "b", ["CONFIG_FAULT_INJECTION=n"])
    assert "CONFIG_IOMMUFD_TEST=y" in e.value.message and "iommufd.config" in e.value.message
    with pytest.raises(ConfigError, match="CONFIG_NO_SUCH_SYMBOL=y"):
        _configure(fake_kernel, tmp_path / "c", ["CONFIG_NO_SUCH_SYMBOL=y"])
    with pytest.raises(ConfigError, match="not a Kconfig setting"):
        _configure(fake_kernel, tmp_path / "d", ["IOMMUFD=y"])


def test_build_is_skipped_when_nothing_changed(fake_kernel, tmp_path):
    bdir = tmp_path / "b"
    cfg = _configure(fake_kernel, bdir)
    req = build.BuildRequest(fake_kernel, bdir, Toolchain("x86_64"), cfg.sha256, "gen1")
    kb = build.build(req, tmp_path / "build.log")
    assert kb.rebuilt and kb.image.exists() and len(kb.build_id) == 40
    assert set(kb.selftests) == {"iommufd", "iommufd_fail_nth"}
    again = build.build(req, tmp_path / "build.log")
    assert not again.rebuilt and again.build_id == kb.build_id
    assert (bdir / "build-count").read_text().count("fake build") == 1
    changed = build.build(build.BuildRequest(fake_kernel, bdir, Toolchain("x86_64"), cfg.sha256, "gen2"),
                          tmp_path / "build.log")
    assert changed.rebuilt


def test_the_selftests_are_built_again_when_a_header_they_read_changes_and_only_then(fake_kernel, tmp_path):
    """The selftests' Makefile knows only their .c file: a series that
    changes a header they include (here the uapi header, as a series adding
    a mock-domain command does) must not leave the old binaries in place."""
    bdir = tmp_path / "b"
    cfg = _configure(fake_kernel, bdir)

    def build_gen(gen):
        return build.build(build.BuildRequest(fake_kernel, bdir, Toolchain("x86_64"), cfg.sha256, gen),
                           tmp_path / "build.log")

    kb = build_gen("gen1")
    binary = kb.selftests["iommufd"]
    past = binary.stat().st_mtime - 100
    for p in kb.selftests.values():
        os.utime(p, (past, past))
    # the tree changed elsewhere: the kernel is made again, the selftests are not
    assert build_gen("gen2").rebuilt and binary.stat().st_mtime == past
    header = fake_kernel / "drivers/iommu/iommufd/iommufd.h"
    header.write_text(header.read_text() + "#define IOMMUFD_FAKE_NEW_CMD 1\n")
    assert build_gen("gen3").rebuilt
    assert all(p.stat().st_mtime > past for p in kb.selftests.values())


def test_an_unchanged_build_reads_no_elf_file_but_one_changed_since_is_checked_again(
        fake_kernel, tmp_path, monkeypatch):
    bdir = tmp_path / "b"
    cfg = _configure(fake_kernel, bdir)
    req = build.BuildRequest(fake_kernel, bdir, Toolchain("x86_64"), cfg.sha256, "gen1")
    kb = build.build(req, tmp_path / "build.log")
    real_build_id, real_check = elfinfo.build_id, elfinfo.check_binary

    def unexpected(*a, **k):
        raise AssertionError("an unchanged build read an ELF file")

    monkeypatch.setattr(elfinfo, "build_id", unexpected)
    monkeypatch.setattr(elfinfo, "check_binary", unexpected)
    assert build.build(req, tmp_path / "build.log").build_id == kb.build_id
    monkeypatch.setattr(elfinfo, "build_id", real_build_id)
    monkeypatch.setattr(elfinfo, "check_binary", real_check)
    # relinked behind the harness's back: another build-id, read from the file
    other = "/bin/true"
    shutil.copy(other, kb.vmlinux)
    again = build.build(req, tmp_path / "build.log")
    assert not again.rebuilt
    assert again.build_id == real_build_id(Path(other)) != kb.build_id
    # a selftest replaced by a dynamic binary is refused again
    shutil.copy(other, kb.selftests["iommufd"])
    with pytest.raises(BuildError, match="dynamically linked"):
        build.build(req, tmp_path / "build.log")


def test_compiler_error_names_file_line_and_log(fake_kernel, tmp_path):
    bdir = tmp_path / "b"
    cfg = _configure(fake_kernel, bdir, ["CONFIG_FAKE_BREAK_BUILD=y"])
    with pytest.raises(BuildError) as e:
        build.build(build.BuildRequest(fake_kernel, bdir, Toolchain("x86_64"), cfg.sha256, "g"), tmp_path / "b.log")
    assert "drivers/iommu/iommufd/main.c:42:7: 'broken' undeclared" in e.value.message
    assert e.value.log == str(tmp_path / "b.log")


def test_second_run_on_a_locked_work_dir_fails_clearly(tmp_path):
    work = WorkDir(tmp_path / "w").prepare()
    with WorkLock(work):
        with pytest.raises(InputError, match="in use by another run"):
            with WorkLock(work):
                pass
    with WorkLock(work):  # released
        pass


def test_unwritable_work_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="not usable"):
        WorkDir(blocker / "w").prepare()


def test_precedence_and_conflicts(fake_kernel, tmp_path):
    prof = profiles.load("x86_64-vtd")
    a = tmp_path / "a.config"
    b = tmp_path / "b.config"
    a.write_text("CONFIG_FAILSLAB=y\nCONFIG_VFIO=y\n")
    b.write_text("# CONFIG_VFIO is not set\n")
    tc = Toolchain("x86_64")
    # the same level disagrees: an error naming both places
    req = config.ConfigRequest(fake_kernel, tmp_path / "b1", tc, fragments=prof.fragments, user_fragments=(a, b))
    with pytest.raises(ConfigError) as e:
        config.resolve(req)
    assert f"{a}:2: CONFIG_VFIO=y" in e.value.message and f"{b}:1: CONFIG_VFIO=n" in e.value.message
    # a later level wins, and the override is reported
    req = config.ConfigRequest(fake_kernel, tmp_path / "b2", tc, fragments=prof.fragments, user_fragments=(b,))
    settings, overrides = config.resolve(req)
    assert settings["CONFIG_VFIO"].value == "n"
    assert any(o.startswith("CONFIG_VFIO: ") and "iommufd.config" in o and "overridden by" in o for o in overrides)
    # --kconfig-add is at the user's level too
    req = config.ConfigRequest(fake_kernel, tmp_path / "b3", tc, fragments=prof.fragments,
                               extra=("CONFIG_VFIO=y",), user_fragments=(b,))
    with pytest.raises(ConfigError, match="conflicting settings for CONFIG_VFIO"):
        config.resolve(req)


def test_full_user_config_as_base(fake_kernel, tmp_path):
    base = tmp_path / "my.config"
    base.write_text("CONFIG_64BIT=y\nCONFIG_MY_OWN_OPTION=y\n")
    prof = profiles.load("x86_64-vtd")
    req = config.ConfigRequest(fake_kernel, tmp_path / "b", Toolchain("x86_64"), fragments=prof.fragments,
                               base_config=base)
    res = config.configure(req, tmp_path / "c.log")
    values = (tmp_path / "b" / ".config").read_text()
    assert "CONFIG_MY_OWN_OPTION=y" in values and "CONFIG_IOMMUFD_TEST=y" in values
    assert res.reconfigured
    # a changed base config is a changed input
    base.write_text("CONFIG_64BIT=y\n")
    assert config.configure(req, tmp_path / "c.log").reconfigured


def test_debug_kernels_are_a_config_level_and_a_build_dir_of_their_own(fake_kernel, tmp_path):
    from harness import debugkernels
    from harness.pipeline import Options, Pipeline, new_record
    from harness.ui import Ui

    assert {"lockdep", "kasan"} <= set(debugkernels.available())
    assert debugkernels.parse(["lockdep,kasan", "lockdep"]) == ("kasan", "lockdep")
    with pytest.raises(InputError, match="unknown debug kernel kasna"):
        debugkernels.parse(["kasna"])

    def prepare(*debug):
        opts = Options.of(work=tmp_path / "w", kernel_src=fake_kernel, default_patches=False, debug=debug)
        WorkDir(opts.work).prepare()
        record = new_record(opts)
        prep = Pipeline(opts, Ui(quiet=True), record, tmp_path / "logs").prepare(until="config")
        return prep, record

    plain, _ = prepare()
    debug, record = prepare("kasan", "lockdep")
    assert plain.config.config.parent.name == "x86_64"
    assert debug.config.config.parent.name == "x86_64+kasan+lockdep"
    assert record.kernel["debug"] == ["kasan", "lockdep"] and record.inputs["debug"] == ["kasan", "lockdep"]
    levels = dict(debug.config_request.levels())
    assert {s.symbol for s in levels["--debug"]} >= {"CONFIG_PROVE_LOCKING", "CONFIG_KASAN", "CONFIG_SLUB_TINY"}
    # switching back finds the plain kernel's configuration where it was
    again, _ = prepare()
    assert not again.config.reconfigured


def test_a_tree_without_iommufd_test_support_is_refused_naming_the_release_that_has_it(fake_kernel):
    """Linux 6.1 (Debian's other kernel source) has no iommufd at all; a tree
    whose iommufd has no CONFIG_IOMMUFD_TEST cannot run the selftests."""
    import shutil

    (fake_kernel / "drivers/iommu/iommufd/Kconfig").write_text("config IOMMUFD\n\ttristate \"IOMMU fd\"\n")
    with pytest.raises(SourceError) as e:
        source.user_origin(fake_kernel)
    assert "no CONFIG_IOMMUFD_TEST" in e.value.message and "appeared in Linux 6.2" in e.value.hint
    (fake_kernel / "drivers/iommu/iommufd/Kconfig").write_text("config IOMMUFD_TEST\n\tbool\n")
    source.user_origin(fake_kernel)  # fine again
    shutil.rmtree(fake_kernel / "drivers/iommu/iommufd")
    text = (fake_kernel / "Makefile").read_text().replace("PATCHLEVEL = 12", "PATCHLEVEL = 1")
    (fake_kernel / "Makefile").write_text(text)
    with pytest.raises(SourceError) as e:
        source.user_origin(fake_kernel)
    assert "is Linux 6.1.99-fake, which has no iommufd" in e.value.message and "6.2" in e.value.hint


def test_an_old_debian_kernel_source_is_refused_before_it_is_extracted(tmp_path):
    import json
    import subprocess
    import sys
    import time

    from fakes import REPO

    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "harness", "run", "--kernel-src", "linux-source-6.1",
                          "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "linux-source-6.1" in res.stderr and "appeared in Linux 6.2" in res.stderr
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "w" / "cache" / "debian").exists()
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert data["verdict"] == "error" and data["inputs"]["kernel_src"] == "linux-source-6.1"


def test_the_debian_package_version_is_read_from_dpkgs_status_file(tmp_path):
    status = tmp_path / "status"
    status.write_text(
        "Package: linux-source-6.12\nStatus: install ok installed\nArchitecture: all\n"
        "Version: 6.12.118-1~deb12u1\nDescription: Linux kernel source\n multi-line\n\n"
        "Package: linux-source-6.1\nStatus: install ok installed\nVersion: 6.1.192-3\n\n"
        "Package: half-gone\nStatus: deinstall ok config-files\n\n")
    assert source._dpkg_version("linux-source-6.12", status) == "6.12.118-1~deb12u1"
    assert source._dpkg_version("linux-source-6.1", status) == "6.1.192-3"  # not a prefix match
    assert source._dpkg_version("half-gone", status) is None
    assert source._dpkg_version("linux-source-6", status) is None


@pytest.mark.skipif(not os.path.exists("/var/lib/dpkg/status"), reason="not a dpkg system")
def test_the_debian_package_version_is_what_dpkg_query_says():
    import subprocess

    for package in ("dpkg", "linux-source-6.12", "linux-source-6.1", "no-such-package-here"):
        res = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
        want = (res.stdout.strip() or None) if res.returncode == 0 else None
        assert source._dpkg_version(package) == want, package
