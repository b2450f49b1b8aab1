"""Any kernel tree a user brings, on the real kernel: a git repository made
from Debian's 6.12 source with this project's fixes committed, a series as a
git range with a regression at its end, the gate's base-vs-series
comparison, and a tree too old for iommufd refused before any work.

The repository (``<work>/e2e/linux-git``) is made once and reused while its
recipe is unchanged: the release as one commit tagged ``v<version>-debian``;
on ``main`` the project's ``kernel-patches/default`` as ordinary commits
(``git am``); on ``series`` two commits of this project's own on top: a
harmless one (a comment in iommufd's main.c) and the regression of
``tests/fixtures/kernel-patches/pin-more-than-8-pages-fails.patch``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.stages import source
from harness.workdir import WorkDir

from expected import listed_tests  # tests/e2e/expected.py

REPO = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("IOMMUFD_HARNESS_WORK", REPO / "work"))
DEFAULT = REPO / "kernel-patches" / "default"
N_DEFAULT = len(list(DEFAULT.glob("*.patch")))  # the project's own series, committed on main
REGRESSION = REPO / "tests" / "fixtures" / "kernel-patches" / "pin-more-than-8-pages-fails.patch"
VARIANTS = ("no_domain", "mock_domain", "two_mock_domain", "mock_domain_limit")
USER_COPY = ("one_domain", "two_domains", "one_domain_hugepage", "two_domains_hugepage")
# what the regression breaks: every test that pins more than 8 pages
BROKEN = ({f"iommufd_ioas.{v}.{t}" for v in VARIANTS for t in ("access_pin", "access_pin_unmap")}
          | {f"iommufd_mock_domain.{v}.user_copy" for v in USER_COPY})
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "iommufd-harness", "GIT_AUTHOR_EMAIL": "iommufd-harness@localhost",
           "GIT_COMMITTER_NAME": "iommufd-harness", "GIT_COMMITTER_EMAIL": "iommufd-harness@localhost",
           "GIT_AUTHOR_DATE": "2026-12-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-12-01T00:00:00Z"}
RECIPE = 2  # bump when make_repo() changes

pytestmark = pytest.mark.slow


def git(repo: Path, *args: str, read_only: bool = False) -> str:
    env = {**GIT_ENV, "GIT_OPTIONAL_LOCKS": "0"} if read_only else GIT_ENV
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def _recipe_hash() -> str:
    h = hashlib.sha256(f"recipe {RECIPE}".encode())
    for p in sorted(DEFAULT.glob("*.patch")) + [REGRESSION]:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def make_repo(where: Path) -> Path:
    origin = source.debian_origin(WorkDir(WORK).prepare())
    version = source.kernel_version(origin.path)
    stamp = where / ".git" / "iommufd-harness-recipe"
    if stamp.is_file() and stamp.read_text().strip() == _recipe_hash():
        return where
    shutil.rmtree(where, ignore_errors=True)
    where.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", f"{origin.path}/.", str(where)], check=True)
    git(where, "init", "-q", "-b", "main")
    git(where, "add", "-A", "-f")  # everything of the release, whatever its .gitignore files say
    git(where, "commit", "-q", "-m", f"Linux {version} ({origin.description})")
    git(where, "tag", "-a", f"v{version}-debian", "-m", f"{origin.description}")
    for patch in sorted(DEFAULT.glob("*.patch")):
        git(where, "am", "-q", str(patch))
    git(where, "checkout", "-q", "-b", "series")
    main_c = where / "drivers/iommu/iommufd/main.c"
    main_c.write_text(main_c.read_text() + "\n/* iommufd-harness: a harmless change of a series */\n")
    git(where, "commit", "-q", "-am", "iommufd: a comment (harmless)")
    git(where, "am", "-q", str(REGRESSION))
    git(where, "checkout", "-q", "main")
    stamp.write_text(_recipe_hash() + "\n")
    return where


@pytest.fixture(scope="module")
def repo() -> Path:
    return make_repo(WORK / "e2e" / "linux-git")


def _run(results: Path, *extra: str) -> tuple[int, dict, str]:
    argv = [sys.executable, "-m", "harness", "run", "--work", str(WORK), "--results", str(results), *extra]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=3600)
    sys.stdout.write(res.stdout[-20000:])
    sys.stderr.write(res.stderr[-20000:])
    data = json.loads((results / "results.json").read_text()) if (results / "results.json").is_file() else {}
    return res.returncode, data, res.stdout + res.stderr


def _snapshot(repo: Path) -> tuple:
    """HEAD, refs, what git status says, and the index file's bytes and time."""
    index = repo / ".git" / "index"
    return (git(repo, "rev-parse", "HEAD"), git(repo, "for-each-ref"),
            git(repo, "status", "--porcelain", read_only=True), index.read_bytes(), index.stat().st_mtime_ns)


def test_a_tree_with_the_fixes_committed_needs_no_patches_and_passes(repo, tmp_path):
    before = _snapshot(repo)
    code, data, out = _run(tmp_path / "fixed", "--kernel-src", str(repo))
    assert code == 0 and data["verdict"] == "pass", data.get("errors")
    assert [p["status"] for p in data["patches"]] == ["already in tree"] * N_DEFAULT
    assert out.count("(already in the tree: skipped)") == N_DEFAULT
    # the tree's own version and state, not Debian's package
    assert data["kernel"]["version"] == source.kernel_version(repo)
    describe = git(repo, "describe", "--tags", "--abbrev=12")
    assert data["kernel"]["git"]["describe"] == describe and describe.endswith(git(repo, "rev-parse", "HEAD")[:12])
    assert data["kernel"]["git"]["dirty"] is False and data["kernel"]["source"].endswith(describe)
    # the tests are those the tree's binaries list
    assert sorted(t["name"] for t in data["tests"]) == sorted(listed_tests("access", "--kernel-src", str(repo)))
    assert {t["status"] for t in data["tests"]} == {"pass"}
    assert _snapshot(repo) == before, "the user's repository must not change"


def test_a_range_whose_last_commit_is_a_regression_fails_exactly_the_broken_tests(repo, tmp_path):
    code, data, out = _run(tmp_path / "range", "--kernel-src", str(repo), "--commits", "main..series")
    assert code == 1 and data["verdict"] == "fail", data.get("errors")
    assert {t["name"] for t in data["tests"] if t["status"] != "pass"} == BROKEN
    shas = git(repo, "rev-list", "--reverse", "main..series").split()
    assert [p.get("commit") for p in data["patches"]] == [None] * N_DEFAULT + shas
    assert [p["status"] for p in data["patches"]] == ["already in tree"] * N_DEFAULT + ["applied"] * 2
    assert data["inputs"]["commits"] == f"{git(repo, 'rev-parse', 'main')}..{shas[-1]}"
    assert data["kernel"]["git"]["head"] == git(repo, "rev-parse", "main")
    assert f"--commits {data['inputs']['commits']}" in out  # the reproducer lines name the exact range


def test_compare_base_names_exactly_what_the_series_broke_and_reuses_the_base(repo, tmp_path):
    code, data, out = _run(tmp_path / "cmp", "--kernel-src", str(repo), "--commits", "main..series",
                           "--compare-base")
    assert code == 1, data.get("errors")
    cmp_ = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert {c["name"] for c in cmp_["regressions"]} == BROKEN
    assert all(c["kind"] == "new failure" for c in cmp_["regressions"])
    assert cmp_["disappeared"] == [] and cmp_["new_tests"] == [] and not cmp_["kernel"]["differs"]
    base = data["base"]
    based = json.loads((Path(base["results"]) / "results.json").read_text())
    assert based["verdict"] == "pass" and [p.get("commit") for p in based["patches"]] == [None] * N_DEFAULT
    assert "gate verdict" in out and "FAIL" in out
    # another series against the same base: the base is not run again, and
    # the harmless commit alone changes nothing
    t0 = time.monotonic()
    code, data, out = _run(tmp_path / "harmless", "--kernel-src", str(repo), "--commits", "main..series~1",
                           "--compare-base")
    elapsed = time.monotonic() - t0
    assert code == 0, data.get("errors")
    assert data["base"]["cached"] is True and data["base"]["results"] == base["results"]
    cmp_ = json.loads((tmp_path / "harmless" / "comparison.json").read_text())
    assert cmp_["regressions"] == [] and cmp_["disappeared"] == []
    assert "base: cached" in out
    sys.stderr.write(f"compare-base with a cached base: {elapsed:.1f} s\n")


def test_linux_6_1_is_refused_in_seconds(tmp_path):
    """Debian's linux-source-6.1 has no iommufd: refused before anything is
    extracted or built, as a package and as an extracted tree."""
    t0 = time.monotonic()
    code, data, out = _run(tmp_path / "pkg", "--kernel-src", "linux-source-6.1")
    assert code == 2 and time.monotonic() - t0 < 30
    assert "linux-source-6.1" in out and "appeared in Linux 6.2" in out and data["verdict"] == "error"
    tarball = Path("/usr/src/linux-source-6.1.tar.xz")
    assert tarball.is_file(), "make setup-test installs linux-source-6.1"
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(tmp_path), "--wildcards", "linux-source-6.1/Makefile",
                    "linux-source-6.1/Kconfig", "linux-source-6.1/drivers/iommu/*"], check=True)
    tree = tmp_path / "linux-source-6.1"
    t0 = time.monotonic()
    code, data, out = _run(tmp_path / "tree", "--kernel-src", str(tree))
    assert code == 2 and time.monotonic() - t0 < 30
    version = source.kernel_version(tree)
    assert version.startswith("6.1.") and f"is Linux {version}, which has no iommufd" in out
    assert "appeared in Linux 6.2" in out
    assert not (WORK / "trees" / source._repo_key(tree.resolve())).exists(), "nothing may be copied or built"


def _walk(results: Path, *extra: str) -> tuple[int, dict, str]:
    argv = [sys.executable, "-m", "harness", "walk", "--work", str(WORK), "--results", str(results), *extra]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=3600)
    sys.stdout.write(res.stdout[-20000:])
    sys.stderr.write(res.stderr[-20000:])
    return res.returncode, json.loads((results / "walk.json").read_text()), res.stdout


def test_walk_finds_the_commit_that_broke_the_tests_linear_and_bisect(repo, tmp_path):
    shas = git(repo, "rev-list", "--reverse", "main..series").split()
    code, data, out = _walk(tmp_path / "walk", "--kernel-src", str(repo), "--commits", "main..series")
    assert code == 1
    assert [s["outcome"] for s in data["steps"]] == ["base", "same", "broke"]
    assert data["first_broken"]["step"] == 2 and data["first_broken"]["subject"].endswith(
        "iommufd: refuse access pins of more than 8 pages")
    assert {b.split(":")[0] for b in data["steps"][2]["broke"]} == BROKEN
    for s in data["steps"]:  # every step is a run of its own, kept
        step = json.loads((Path(s["results"]) / "results.json").read_text())
        assert [p.get("commit") for p in step["patches"]][N_DEFAULT:] == shas[:s["index"]]
    assert "first broken by step 2" in out and "first broken by step 2" in (tmp_path / "walk" / "summary.md").read_text()
    # bisect: the base, the whole range, then the middle; the same answer
    code, data, out = _walk(tmp_path / "bisect", "--kernel-src", str(repo), "--commits", "main..series",
                            "--bisect", "--tests", "iommufd_ioas.no_domain.*")
    assert code == 1 and [s["index"] for s in data["steps"]] == [0, 1, 2]
    assert data["first_broken"]["step"] == 2
    assert {b.split(":")[0] for b in data["steps"][2]["broke"]} == {
        "iommufd_ioas.no_domain.access_pin", "iommufd_ioas.no_domain.access_pin_unmap"}
    # one line to the failing case again: the step's kernel, its test, three times in one boot
    step = Path(data["steps"][2]["results"])
    res = subprocess.run([sys.executable, "-m", "harness", "repro", str(step), "iommufd_ioas.no_domain.access_pin",
                          "--repeat", "3", "--work", str(WORK), "--results", str(tmp_path / "repro")], cwd=REPO,
                         capture_output=True, text=True, timeout=3600)
    sys.stderr.write(res.stderr[-5000:])
    again = json.loads((tmp_path / "repro" / "results.json").read_text())
    assert res.returncode == 1
    assert again["inputs"]["commits"] == json.loads((step / "results.json").read_text())["inputs"]["commits"]
    assert [(t["name"], t["status"]) for t in again["tests"]] == [("iommufd_ioas.no_domain.access_pin", "fail")]
    assert again["tests"][0]["reason"].startswith("3 of 3 attempts did not pass, first at attempt 1")
    assert f"iommufd-harness repro {tmp_path / 'repro'}" in res.stdout
