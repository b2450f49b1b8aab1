"""End to end on the real thing: Debian's linux-source-6.12, the default patch
series, a kernel built here, booted under QEMU behind the emulated VT-d, the
access suite run over SSH.  Slow (a cold build takes minutes); reuses the
work dir's caches when they exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import elfinfo, suites
from harness.parse.tap import parse

from expected import default_tree_version, listed_tests  # tests/e2e/expected.py

REPO = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("IOMMUFD_HARNESS_WORK", REPO / "work"))
EXIT_FOR = {"pass": 0, "fail": 1, "error": 2}
# Access tests that need no mock domain: they pass behind VT-d even without
# the mock-device fix (0002).
NO_DOMAIN_PASSING = ["iommufd_ioas.no_domain.access_pin_unmap", "iommufd_ioas.no_domain.access_rw",
                     "iommufd_ioas.no_domain.access_rw_unaligned"]
DEFAULT_SERIES = REPO / "kernel-patches" / "default"
COVERAGE_SERIES = REPO / "tests" / "fixtures" / "kernel-patches" / "coverage-two-functions.patch"

pytestmark = pytest.mark.slow


def _base_image(results: Path):
    """The base image a run used, with its recipe's SSH layout."""
    from harness import data as hdata
    from harness.stages import image

    info = json.loads((results / "results.json").read_text())["image"]
    recipe = image.Recipe.load(hdata.folder("qemu-images") / info["recipe"])
    return image.BaseImage(WORK / "images" / info["file"], {}, False, recipe.ssh)


def _run(results: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "harness", "run", "--work", str(WORK), "--results", str(results), *extra]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=3600)
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr[-20000:])
    return res


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("e2e") / "run1"
    res = _run(results)
    return res, results


def test_access_suite_ran_in_the_booted_guest(first_run):
    res, results = first_run
    data = json.loads((results / "results.json").read_text())
    assert data["verdict"] in ("pass", "fail"), data["errors"]
    assert res.returncode == EXIT_FOR[data["verdict"]]
    # the guest ran the kernel that was built: build-id from vmlinux == /sys/kernel/notes
    assert data["guest"]["build_id"] == data["kernel"]["build_id"]
    assert len(data["kernel"]["build_id"]) == 40
    assert data["kernel"]["version"] == default_tree_version()
    assert data["qemu"]["accel"] in ("tcg", "kvm")
    assert any(i.startswith("dmar") for i in data["guest"]["iommus"]), "VT-d must be active in the guest"
    assert data["guest"]["hugepages"] >= 64
    # verified on what the guest image printed while booting; over one SSH
    # connection the listing (unless this binary was listed before) and the tests
    assert data["guest"]["verified_from"] == "console"
    assert data["guest"]["ssh_commands"] in (1, 2) and data["guest"]["ssh_connections"] == 1
    assert any(p["subject"].startswith("selftests/iommu") for p in data["patches"])
    console = (results / "console.log").read_text()
    assert "Run /init as init process" in console and "DMAR" in console

    names = [t["name"] for t in data["tests"]]
    assert sorted(names) == sorted(listed_tests("access")) and len(set(names)) == len(names)
    access = suites.load("access")
    for pattern in access.runs[0].patterns:
        assert any(__import__("fnmatch").fnmatch(n, pattern) for n in names), pattern
    # with the default series (including the VT-d mock-device fix) every access test passes
    status = {t["name"]: t["status"] for t in data["tests"]}
    assert set(status.values()) == {"pass"}, {n: s for n, s in status.items() if s != "pass"}
    assert data["verdict"] == "pass" and res.returncode == 0


def test_results_json_and_junit_agree_with_the_tap(first_run):
    _, results = first_run
    data = json.loads((results / "results.json").read_text())
    tap = parse((results / "tap" / "iommufd.tap").read_text())
    assert tap.consistency_errors() == []
    tap_status = {c.name: c.status for c in tap.finished()}
    assert tap_status == {t["name"]: t["status"] for t in data["tests"]}
    suite = ET.parse(results / "junit.xml").getroot()
    cases = suite.findall("testcase")
    assert len(cases) == len(listed_tests("access"))
    failed = {f"{c.get('classname')}.{c.get('name')}" for c in cases if c.find("failure") is not None}
    assert failed == {n for n, s in tap_status.items() if s == "fail"}
    for t in data["tests"]:
        assert t["log"].startswith(f"#  RUN           {t['name']} ...")


def test_second_run_rebuilds_nothing(first_run, tmp_path):
    results = tmp_path / "run2"
    res = _run(results, "--tests", "iommufd_ioas.no_domain.access_rw*")
    data = json.loads((results / "results.json").read_text())
    assert res.returncode == 0, data["errors"]
    assert data["kernel"]["rebuilt"] is False and data["image"]["rebuilt"] is False
    assert [t["name"] for t in data["tests"]] == ["iommufd_ioas.no_domain.access_rw",
                                                  "iommufd_ioas.no_domain.access_rw_unaligned"]
    first = json.loads((first_run[1] / "results.json").read_text())
    assert data["kernel"]["build_id"] == first["kernel"]["build_id"]
    # the same binary's tests were listed by the first run: one command, the tests
    assert data["guest"]["ssh_commands"] == 1 and data["guest"]["verified_from"] == "console"


@pytest.fixture(scope="module")
def full_run(first_run, tmp_path_factory):
    """The full suite, with --coverage of a series of this project's own that
    changes two functions of drivers/iommu/iommufd/ without changing what
    they do: every kernel has the gcov core, so coverage is an incremental
    rebuild of that directory in the default kernel's build dir."""
    results = tmp_path_factory.mktemp("e2e") / "full"
    res = _run(results, "--suite", "full", "--coverage", "--patches", str(COVERAGE_SERIES))
    return res, results, json.loads((results / "results.json").read_text())


def test_full_suite_passes_behind_vtd(full_run):
    res, _, data = full_run
    assert data["counts"]["pass"] == len(listed_tests("full")), [(t["name"], t["status"]) for t in data["tests"] if t["status"] != "pass"]
    assert res.returncode == 0


def _added_lines(patch: Path) -> dict[str, list[int]]:
    """file -> the line numbers the patch's added lines have in the patched file."""
    out: dict[str, list[int]] = {}
    current, line = None, 0
    for text in patch.read_text().splitlines():
        if text.startswith("+++ b/"):
            current = text[6:]
        elif text.startswith("@@"):
            line = int(text.split("+")[1].split(",")[0])
        elif current and text.startswith("+"):
            out.setdefault(current, []).append(line)
            line += 1
        elif current and text.startswith(" "):
            line += 1
    return out


def test_coverage_shows_which_changed_lines_each_suite_executed(full_run, tmp_path):
    """Of the series' two changed functions the access suite executed the
    line added to iommufd_access_rw() and not the one in the VFIO
    compatibility code; the full suite executed both, and more of
    drivers/iommu/iommufd/ than the access suite."""
    added = _added_lines(COVERAGE_SERIES)
    rw, ext = added["drivers/iommu/iommufd/device.c"], added["drivers/iommu/iommufd/vfio_compat.c"]
    results = tmp_path / "access"
    res = _run(results, "--coverage", "--patches", str(COVERAGE_SERIES))
    data = json.loads((results / "results.json").read_text())
    assert res.returncode == 0 and data["verdict"] == "pass", data["errors"]
    cov = data["coverage"]
    series = {f["file"]: f for f in cov["series"]}
    assert set(series) == set(added)
    assert (series["drivers/iommu/iommufd/device.c"]["executed"],
            series["drivers/iommu/iommufd/device.c"]["not_executed"]) == (rw, [])
    assert (series["drivers/iommu/iommufd/vfio_compat.c"]["executed"],
            series["drivers/iommu/iommufd/vfio_compat.c"]["not_executed"]) == ([], ext)
    assert cov["dirs"] == ["drivers/iommu/iommufd"] and 0 < cov["total"]["executed"] < cov["total"]["lines"]
    assert all(f.startswith("drivers/iommu/iommufd/") for f in cov["files"])  # only what was asked for
    assert "iommufd-harness-gcov-profile.patch" in [p["name"] for p in data["patches"]]
    md = (results / "summary.md").read_text()
    assert f"| `drivers/iommu/iommufd/vfio_compat.c` | 1 | 0 | 1 | {ext[0]} |" in md
    assert "<coverage" in (results / "coverage" / "cobertura.xml").read_text()
    assert (results / "coverage" / "index.html").is_file()

    _, full_results, full = full_run
    fseries = {f["file"]: f for f in full["coverage"]["series"]}
    assert fseries["drivers/iommu/iommufd/vfio_compat.c"]["executed"] == ext
    assert fseries["drivers/iommu/iommufd/device.c"]["executed"] == rw
    assert full["coverage"]["total"]["lines"] == cov["total"]["lines"]
    assert full["coverage"]["total"]["executed"] > cov["total"]["executed"]
    assert full["coverage"]["total"]["taken"] > cov["total"]["taken"]
    assert "| `drivers/iommu/iommufd/vfio_compat.c` | 1 | 1 | 0 |" in (full_results / "summary.md").read_text()


def test_without_the_vtd_fix_mock_domain_tests_fail(first_run, tmp_path):
    """The regression check for kernel-patches/default/0002: drop it and the
    mock-domain access tests fail behind VT-d (EINVAL from MOCK_DOMAIN)."""
    only_0001 = sorted(DEFAULT_SERIES.glob("0001-*.patch"))
    assert len(only_0001) == 1
    results = tmp_path / "no-fix"
    res = _run(results, "--no-default-patches", "--patches", str(only_0001[0]),
               "--tests", "iommufd_ioas.no_domain.access_rw,iommufd_ioas.mock_domain.access_pin*")
    data = json.loads((results / "results.json").read_text())
    status = {t["name"]: t["status"] for t in data["tests"]}
    assert status == {"iommufd_ioas.no_domain.access_rw": "pass",
                      "iommufd_ioas.mock_domain.access_pin": "fail",
                      "iommufd_ioas.mock_domain.access_pin_unmap": "fail"}
    assert res.returncode == 1 and data["verdict"] == "fail"
    failing = next(t for t in data["tests"] if t["name"] == "iommufd_ioas.mock_domain.access_pin")
    # the selftest's own assertion: creating the mock domain failed
    assert "Expected 0 (0) == _test_cmd_mock_domain" in failing["log"]


def test_fail_nth_suite_runs_with_fault_injection(first_run, tmp_path):
    results = tmp_path / "fail_nth"
    res = _run(results, "--suite", "fail_nth")
    data = json.loads((results / "results.json").read_text())
    assert [t["status"] for t in data["tests"]] == ["pass"] * len(listed_tests("fail_nth")), data["tests"]
    assert res.returncode == 0


def test_matrix_virtio_iommu_and_arm64_smmuv3(first_run, tmp_path):
    """The same access tests behind a paravirtual IOMMU and on the arm64
    (ODROID-class) guest behind an emulated SMMUv3, as one matrix run."""
    results = tmp_path / "matrix"
    res = _run(results, "--profiles", "x86_64-virtio-iommu,arm64-smmuv3")
    assert res.returncode == 0
    assert "iommufd-harness matrix" in res.stdout
    expect = {"x86_64-virtio-iommu": (r"^[0-9a-f]{4}:", "x86_64"), "arm64-smmuv3": (r"^smmu3\.", "arm64")}
    for profile, (iommu, arch) in expect.items():
        data = json.loads((results / profile / "results.json").read_text())
        assert data["profile"] == profile and data["kernel"]["arch"] == arch
        assert any(__import__("re").match(iommu, i) for i in data["guest"]["iommus"]), data["guest"]
        assert data["guest"]["build_id"] == data["kernel"]["build_id"]
        assert data["counts"]["pass"] == len(listed_tests("access")) and data["verdict"] == "pass"
    # one verdict over the matrix, in its top dir; report --merge of the cells says the same
    merged = json.loads((results / "merged.json").read_text())
    assert merged["verdict"] == "pass"
    assert [c["name"] for c in merged["cells"]] == ["arm64-smmuv3 access", "x86_64-virtio-iommu access"]
    again = subprocess.run([sys.executable, "-m", "harness", "report", "--merge", str(results / "arm64-smmuv3"),
                            str(results / "x86_64-virtio-iommu"), "--out", str(tmp_path / "m")], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads((tmp_path / "m" / "merged.json").read_text())["verdict"] == "pass"
    arm = json.loads((results / "arm64-smmuv3" / "results.json").read_text())
    assert arm["qemu"]["accel"] == "tcg" and "arm-smmuv3" not in arm["errors"]
    assert "-machine" in arm["qemu"]["cmdline"] and "virt,iommu=smmuv3,gic-version=3" in arm["qemu"]["cmdline"]


def test_config_that_would_not_stick_is_explained_before_building(tmp_path):
    """FAULT_INJECTION=n drops IOMMUFD_TEST: stop before the build, say why and
    what fixes it (kconfiglib on the real 6.12 tree)."""
    argv = [sys.executable, "-m", "harness", "config", "--work", str(tmp_path / "w"),
            "--kconfig-add", "CONFIG_FAULT_INJECTION=n", "--explain", "CONFIG_IOMMUFD_TSET"]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2
    assert ("IOMMUFD_TEST depends on DEBUG_KERNEL [=y] && FAULT_INJECTION [=n] && RUNTIME_TESTING_MENU [=y]"
            in res.stderr)
    assert "fix: add CONFIG_FAULT_INJECTION=y" in res.stderr
    assert not list((tmp_path / "w" / "trees").glob("*/build/*/vmlinux")), "nothing may be built"
    res = subprocess.run(argv[:-4] + ["--explain", "CONFIG_IOMMUFD_TSET"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0
    assert "no symbol IOMMUFD_TSET in this tree; did you mean CONFIG_IOMMUFD_TEST?" in res.stdout


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_debug_kernels_configure_on_the_real_tree(arch):
    """--debug lockdep,kasan: every symbol of configs/debug/ keeps its value
    on the real tree (KASAN needs SLUB_TINY off), checked before building."""
    argv = [sys.executable, "-m", "harness", "config", "--work", str(WORK), "--arch", arch,
            "--debug", "lockdep,kasan", "--show", "PROVE_LOCKING", "--show", "KASAN", "--show", "SLUB_TINY",
            "--show", "KFENCE", "--show", "UBSAN_BOUNDS", "--show", "DEBUG_ATOMIC_SLEEP"]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    shown = set(res.stdout.splitlines()[1:])
    assert shown == {"CONFIG_PROVE_LOCKING=y", "CONFIG_KASAN=y", "CONFIG_SLUB_TINY is not set", "CONFIG_KFENCE=y",
                     "CONFIG_UBSAN_BOUNDS=y", "CONFIG_DEBUG_ATOMIC_SLEEP=y"}, res.stdout
    assert f"{arch}+kasan+lockdep" in res.stdout.splitlines()[0]


def test_two_vms_at_once_do_not_collide(first_run, tmp_path):
    """Two guests of the same kernel side by side (as two runs in two work
    dirs would start them): separate ports, QMP sockets, consoles and keys,
    both running at the same time.  QEMU is started from this thread: it
    gets SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG)."""
    import threading

    from harness import profiles
    from harness.stages import image
    from harness.targets import qemu
    from harness.targets.ssh import SshClient

    kernel = WORK / "trees" / "debian-6.12" / "build" / "x86_64" / "arch/x86/boot/bzImage"
    base = _base_image(first_run[1])
    profile = profiles.load("x86_64-vtd")
    vms, outputs, errors = {}, {}, []

    def answer(i: int) -> None:
        vm, keys = vms[i]
        try:
            client = SshClient("127.0.0.1", vm.ssh_port, "root", keys.client_private, keys.host_public)
            vm.wait_for_sshd(client.connect)
            outputs[i] = (vm.ssh_port, client.run(["cat", f"{base.ssh.host_key}.pub"], 30).text.strip(),
                          keys.host_public)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    try:
        for i in (1, 2):
            run_dir = tmp_path / f"vm{i}"
            keys = image.make_keys(run_dir)
            vm = qemu.QemuVM(qemu.BootRequest(profile, kernel, image.run_image(base, keys, run_dir), run_dir, "tcg",
                                              qmp_dir=run_dir))
            vms[i] = (vm, keys)
            vm.start()
        threads = [threading.Thread(target=answer, args=(i,)) for i in vms]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert errors == []
        assert all(vm.alive() for vm, _ in vms.values())  # both up at once
    finally:
        for vm, _ in vms.values():
            vm.stop()
    (p1, key1, want1), (p2, key2, want2) = outputs[1], outputs[2]
    assert p1 != p2
    assert key1 == want1 and key2 == want2 and key1 != key2  # each reached its own guest
    assert all(not vm.alive() for vm, _ in vms.values())


def test_a_guest_whose_sshd_dies_is_named_at_once(first_run, tmp_path):
    """The image's SSH server cannot start (here: its host key is cut
    short): the guest's init says so on the console and the boot fails with
    the server's own words, not after the boot timeout."""
    from harness import profiles
    from harness.errors import BootError
    from harness.stages import image
    from harness.targets import qemu
    from harness.targets.ssh import SshClient

    kernel = WORK / "trees" / "debian-6.12" / "build" / "x86_64" / "arch/x86/boot/bzImage"
    base = _base_image(first_run[1])
    keys = image.make_keys(tmp_path)
    cut = tmp_path / "host_key"
    cut.write_bytes(keys.host_private[base.ssh.server][:20])
    initrd = image.run_image(base, keys, tmp_path, {base.ssh.host_key: (cut, 0o600)})
    vm = qemu.QemuVM(qemu.BootRequest(profiles.load("x86_64-vtd"), kernel, initrd, tmp_path, "tcg",
                                      qmp_dir=tmp_path))
    t0 = time.monotonic()
    vm.start()
    try:
        client = SshClient("127.0.0.1", vm.ssh_port, "root", keys.client_private, keys.host_public)
        with pytest.raises(BootError, match="sshd exited before it listened") as e:
            vm.wait_for_sshd(client.connect)
    finally:
        vm.stop()
    assert time.monotonic() - t0 < 60  # the boot timeout is 300 s
    assert "No hostkeys available" in str(e.value)  # Dropbear's words for a host key it cannot load


def test_dropbear_reads_the_host_key_the_harness_writes(first_run, tmp_path):
    """Dropbear's own dropbearkey, from the packages the image was made of,
    reads the run's host key and prints the public key the harness pins."""
    from harness.stages import image

    base = _base_image(first_run[1])
    assert base.ssh.server == "dropbear"
    root = WORK / "cache" / "rootfs" / "debian-bookworm-amd64"
    keys = image.make_keys(tmp_path)
    key = tmp_path / "host_key"
    key.write_bytes(keys.host_private["dropbear"])
    res = subprocess.run([root / "usr/bin/dropbearkey", "-y", "-f", key], capture_output=True, text=True,
                         env={"LD_LIBRARY_PATH": f"{root}/usr/lib/x86_64-linux-gnu:{root}/lib/x86_64-linux-gnu"})
    assert res.returncode == 0, res.stderr
    public = next(line for line in res.stdout.splitlines() if line.startswith("ssh-ed25519 "))
    assert public.split()[:2] == keys.host_public.split()[:2]


def test_board_target_over_ssh(first_run, tmp_path):
    """The board path (ODROID lab) against a stand-in board: a running guest
    reached only over SSH with a pinned host key.  The harness copies the
    selftests there, follows /dev/kmsg and runs the same tests."""
    from harness import profiles
    from harness.stages import image
    from harness.targets import qemu
    from harness.targets.ssh import SshClient

    kernel = WORK / "trees" / "debian-6.12" / "build" / "x86_64" / "arch/x86/boot/bzImage"
    booted_id = elfinfo.build_id(kernel.parents[3] / "vmlinux")  # whatever the last test built
    base = _base_image(first_run[1])
    run_dir = tmp_path / "board"
    keys = image.make_keys(run_dir)
    vm = qemu.QemuVM(qemu.BootRequest(profiles.load("x86_64-vtd"), kernel, image.run_image(base, keys, run_dir),
                                      run_dir, "tcg", qmp_dir=run_dir))
    try:
        vm.start()
        vm.wait_for_sshd(SshClient("127.0.0.1", vm.ssh_port, "root", keys.client_private, keys.host_public).connect)
        known = tmp_path / "known_hosts"
        board = ["--board", f"root@127.0.0.1:{vm.ssh_port}", "--board-key", str(keys.client_private)]
        # an unknown host key is refused, never accepted on the fly
        known.write_text("")
        res = _run(tmp_path / "refused", *board, "--known-hosts", str(known))
        assert res.returncode == 2 and "has no host key in" in res.stderr
        known.write_text(f"[127.0.0.1]:{vm.ssh_port} {keys.host_public}\n")
        res = _run(tmp_path / "res", *board, "--known-hosts", str(known), "--suite", "full")
        out = json.loads((tmp_path / "res" / "results.json").read_text())
        assert res.returncode == 0, out["errors"]
        assert out["guest"]["kind"] == "board" and out["counts"]["pass"] == len(listed_tests("full"))
        # the board's own kernel is recorded, and compared with the one built here
        assert out["guest"]["build_id"] == booted_id
        assert out["guest"]["built_kernel_booted"] == (booted_id == out["kernel"]["build_id"])
        console = (tmp_path / "res" / "console.log").read_text()
        assert console.count("iommufd-harness: RUN ") == len(listed_tests("full"))  # the kernel log, followed over SSH
        # the harness cleaned up after itself on the board
        c = SshClient("127.0.0.1", vm.ssh_port, "root", keys.client_private, keys.host_public)
        assert c.run(["sh", "-c", "ls -d /tmp/iommufd-harness-* 2>/dev/null | wc -l"], 30).text.strip() == "0"
    finally:
        vm.stop()
