"""Reproducer lines carry every input that defines the kernel and the machine."""

import shlex

from harness.pipeline import Options, inputs, new_record
from harness.reports.markdown import render
from harness.reports.repro import reproducer
from harness.reports.results import TestRecord


def test_every_input_is_in_the_line(tmp_path):
    opts = Options.of(work=tmp_path, kernel_src=tmp_path / "linux", default_patches=False,
                   patches=[tmp_path / "a.patch", tmp_path / "b series"], kconfig_add=["CONFIG_KASAN=y"],
                   fragments=[tmp_path / "debug.config"], base_config=tmp_path / "full.config",
                   extra_cmdline="iommu.strict=1 nokaslr", profile="arm64-smmuv3", suite="full")
    line = reproducer("arm64-smmuv3", "full", "iommufd_ioas.no_domain.access_rw", inputs(opts))
    argv = shlex.split(line)
    assert argv[:2] == ["iommufd-harness", "run"]
    pairs = list(zip(argv[2::1], argv[3::1]))
    for flag, value in [("--profile", "arm64-smmuv3"), ("--suite", "full"),
                        ("--tests", "iommufd_ioas.no_domain.access_rw"), ("--kernel-src", str(tmp_path / "linux")),
                        ("--patches", str(tmp_path / "a.patch")), ("--patches", str(tmp_path / "b series")),
                        ("--kconfig-add", "CONFIG_KASAN=y"), ("--fragment", str(tmp_path / "debug.config")),
                        ("--config", str(tmp_path / "full.config")), ("--cmdline", "iommu.strict=1 nokaslr")]:
        assert (flag, value) in pairs, flag
    assert "--no-default-patches" in argv
    # the order of --patches is the order they apply in
    assert argv.index(str(tmp_path / "a.patch")) < argv.index(str(tmp_path / "b series"))


def test_a_lab_board_run_is_reproduced_on_that_board(tmp_path):
    """Without --lab/--board the line would run a board profile on a VM."""
    lab = tmp_path / "lab.toml"
    opts = Options.of(work=tmp_path, profile="board-arm64", board="odroid-1", lab=lab)
    argv = shlex.split(reproducer("board-arm64", "access", "iommufd_ioas.no_domain.access_rw", inputs(opts)))
    pairs = list(zip(argv, argv[1:]))
    assert ("--lab", str(lab)) in pairs and ("--board", "odroid-1") in pairs
    line = reproducer("board-arm64", "access", "x", inputs(Options.of(work=tmp_path, board="root@10.0.0.2:2222")))
    assert line.endswith("--board root@10.0.0.2:2222") and "--lab" not in line


def test_a_plain_run_has_a_plain_line(tmp_path):
    line = reproducer("x86_64-vtd", "access", "iommufd_ioas.mock_domain.access_pin", inputs(Options.of(work=tmp_path)))
    assert line == ("iommufd-harness run --profile x86_64-vtd --suite access "
                    "--tests 'iommufd_ioas.mock_domain.access_pin'")


def test_summary_md_reproduces_with_the_runs_inputs(tmp_path):
    run = new_record(Options.of(work=tmp_path, patches=[tmp_path / "fix.patch"], kconfig_add=["CONFIG_PROVE_LOCKING=y"]))
    run.tests = [TestRecord("iommufd_ioas.no_domain.access_rw", "fail", 0.1, "", "Expected 0", "iommufd")]
    run.decide()
    md = render(run, None)
    assert (f"--tests 'iommufd_ioas.no_domain.access_rw' --patches {tmp_path / 'fix.patch'} "
            "--kconfig-add CONFIG_PROVE_LOCKING=y") in md


def test_a_run_in_another_work_dir_is_reproduced_there(tmp_path, monkeypatch):
    """Lines printed for a run with --work W name W (pasted, they would
    otherwise rebuild everything in ./work); the default work dir is left out."""
    from harness.jobs import work_arg
    from harness.reports.repro import repro_line

    monkeypatch.setenv("IOMMUFD_HARNESS_WORK", str(tmp_path / "default"))
    assert work_arg(tmp_path / "default") is None
    other = tmp_path / "my work"
    assert work_arg(other) == str(other)
    line = reproducer("x86_64-vtd", "access", "iommufd_ioas.mock_domain.access_pin", inputs(Options.of(work=other)),
                      work_arg(other))
    assert shlex.split(line)[2:4] == ["--work", str(other)]
    assert shlex.split(repro_line("/r", work=work_arg(other))) == ["iommufd-harness", "repro", "/r", "--work", str(other)]
