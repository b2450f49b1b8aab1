"""Git trees as users have them: a working tree as it is, one commit of it
(--rev), a range of commits as the series (--commits).  The repository is
only ever read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import PatchError, SourceError
from harness.stages import patches, source
from harness.workdir import WorkDir

REPO = Path(__file__).resolve().parents[2]
MAIN_C = "drivers/iommu/iommufd/main.c"
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.org",
           "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.org"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=GIT_ENV).stdout.strip()


def commit(repo: Path, rel: str, old: str, new: str, subject: str) -> str:
    path = repo / rel
    path.write_text(path.read_text().replace(old, new))
    git(repo, "commit", "-qam", subject)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(fake_kernel):
    git(fake_kernel, "init", "-q", "-b", "main")
    git(fake_kernel, "add", "-A")
    git(fake_kernel, "commit", "-qm", "fake 6.12")
    git(fake_kernel, "tag", "v6.12-fake")
    return fake_kernel


def snapshot(repo: Path) -> dict:
    """Every file under .git with its content hash and modification time."""
    out = {}
    for p in sorted((repo / ".git").rglob("*")):
        if p.is_file():
            out[str(p.relative_to(repo))] = (p.stat().st_mtime_ns, p.read_bytes())
    return out


def test_a_working_tree_is_taken_as_it_is_and_described(repo, tmp_path):
    work = WorkDir(tmp_path / "w").prepare()
    clean = source.user_origin(repo, work)
    assert clean.kind == "git" and clean.git["describe"] == "v6.12-fake" and not clean.git["dirty"]
    before = snapshot(repo)
    (repo / MAIN_C).write_text((repo / MAIN_C).read_text().replace("return 0;", "return 7;"))
    (repo / "drivers/iommu/iommufd/new.c").write_text("int new;\n")
    tree = source.prepare(source.SourceRequest(repo), work)
    git_ = tree.origin.git
    assert git_["describe"] == "v6.12-fake-dirty" and git_["dirty"] and git_["untracked"] == 1
    assert git_["diff_sha256"] != clean.git["diff_sha256"]
    # uncommitted changes and untracked files are what the working copy holds
    assert "return 7;" in (tree.path / MAIN_C).read_text()
    assert (tree.path / "drivers/iommu/iommufd/new.c").exists()
    # the diff hash follows the content, not the time
    again = source.user_origin(repo, work)
    assert again.git["diff_sha256"] == git_["diff_sha256"] and again.state == tree.origin.state
    (repo / "drivers/iommu/iommufd/new.c").write_text("int newer;\n")
    assert source.user_origin(repo, work).git["diff_sha256"] != git_["diff_sha256"]
    assert snapshot(repo) == before, "the repository (index included) must not be written"


def test_rev_exports_one_commit_and_a_switch_rewrites_only_what_differs(repo, tmp_path):
    work = WorkDir(tmp_path / "w").prepare()
    first = git(repo, "rev-parse", "HEAD")
    second = commit(repo, MAIN_C, "return 0;", "return 2;", "iommufd: two")
    (repo / MAIN_C).write_text("uncommitted\n")  # not part of any commit
    before = snapshot(repo)
    tree = source.prepare(source.SourceRequest(repo, rev="HEAD~1"), work)
    assert tree.origin.kind == "git-rev" and tree.origin.git["head"] == first
    assert "return 0;" in (tree.path / MAIN_C).read_text() and tree.origin.git["describe"] == "v6.12-fake"
    kconfig = tree.origin.path / "Kconfig"
    mtime = kconfig.stat().st_mtime_ns
    tree = source.prepare(source.SourceRequest(repo, rev=second), work)
    assert "return 2;" in (tree.path / MAIN_C).read_text()
    assert tree.changed == (MAIN_C,)  # only the file the commits differ in
    assert kconfig.stat().st_mtime_ns == mtime
    assert tree.origin.state == f"git {second}"
    # a working tree and a commit of the same repository have working copies of their own
    assert source.user_origin(repo, work).key != tree.origin.key
    assert snapshot(repo) == before


def test_rev_that_names_no_commit(repo, tmp_path):
    with pytest.raises(SourceError) as e:
        source.user_origin(repo, WorkDir(tmp_path / "w").prepare(), rev="no-such-branch")
    assert "no-such-branch" in e.value.message


def test_commits_are_the_series_on_their_base(repo, tmp_path):
    base = git(repo, "rev-parse", "HEAD")
    one = commit(repo, MAIN_C, "return 0;", "return 1;", "iommufd: one")
    two = commit(repo, "Kconfig", "# fake", "# fake, two", "iommufd: two")
    got_base, series = patches.load_commits(repo, "v6.12-fake..main")
    assert got_base == base
    assert [(p.name, p.subject, p.record()["commit"]) for p in series] == [
        ("0001-iommufd-one.patch", "iommufd: one", one), ("0002-iommufd-two.patch", "iommufd: two", two)]
    work = WorkDir(tmp_path / "w").prepare()
    tree = source.prepare(source.SourceRequest(repo, rev=got_base), work)
    res = patches.apply_series(tree.origin.path, tree.path, series, set(tree.protected), tmp_path / "p.log")
    assert res.already == () and "return 1;" in (tree.path / MAIN_C).read_text()
    assert (tree.path / "Kconfig").read_text() == (repo / "Kconfig").read_text()


@pytest.mark.parametrize("spec, message", [
    ("main", "is not a range"),
    ("main..main", "holds no commits"),
    ("main..v6.12-fake", "main is not an ancestor of v6.12-fake"),
    ("v6.12-fake..nope", "finding commit 'nope'"),
])
def test_commits_mistakes_are_named(repo, spec, message):
    commit(repo, MAIN_C, "return 0;", "return 1;", "iommufd: one")
    with pytest.raises((PatchError, SourceError)) as e:
        patches.load_commits(repo, spec)
    assert message in e.value.message


def test_commits_whose_base_is_not_an_ancestor(repo):
    git(repo, "checkout", "-qb", "side")
    commit(repo, MAIN_C, "return 0;", "return 3;", "side")
    git(repo, "checkout", "-q", "main")
    commit(repo, MAIN_C, "return 0;", "return 1;", "main")
    with pytest.raises(PatchError) as e:
        patches.load_commits(repo, "side..main")
    assert "side is not an ancestor of main" in e.value.message


def test_build_records_git_state_and_a_reproducer_takes_the_resolved_range(repo, tmp_path):
    """The CLI end to end on the fake tree: --commits builds the base plus the
    range and the record says which commits, resolved."""
    base = git(repo, "rev-parse", "HEAD")
    tip = commit(repo, MAIN_C, "return 0;", "return 1;", "iommufd: one")
    results = tmp_path / "res"
    res = subprocess.run([sys.executable, "-m", "harness", "run", "--kernel-src", str(repo), "--no-default-patches",
                          "--commits", "HEAD~1..HEAD", "--work", str(tmp_path / "w"), "--results", str(results),
                          "--profile", "x86_64-vtd"], cwd=REPO, capture_output=True, text=True, timeout=300)
    data = json.loads((results / "results.json").read_text())
    assert data["inputs"]["commits"] == f"{base}..{tip}"
    assert data["kernel"]["git"]["head"] == base and data["kernel"]["git"]["commits"] == f"{base}..{tip}"
    assert [p.get("commit") for p in data["patches"]] == [tip]
    assert "patch 0001-iommufd-one.patch: iommufd: one" in res.stdout + res.stderr


@pytest.mark.parametrize("args, message", [
    (["--rev", "HEAD"], "--rev needs the git repository"),
    (["--kernel-src", "/tmp", "--rev", "A", "--commits", "A..B"], "--rev and --commits both"),
    (["--kernel-src", "linux-source-6.12", "--commits", "A..B"], "--commits needs a git repository"),
])
def test_cli_refuses_contradictory_git_options(tmp_path, args, message):
    res = subprocess.run([sys.executable, "-m", "harness", "run", *args, "--work", str(tmp_path / "w")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_an_export_whose_previous_commit_is_gone_starts_afresh(repo, tmp_path):
    work = WorkDir(tmp_path / "w").prepare()
    source.prepare(source.SourceRequest(repo, rev="HEAD"), work)
    stamp = next((work.cache / "git").glob("*/exported"))
    stamp.write_text("0" * 40 + "\n")  # rebased away and collected
    (stamp.parent / "index.lock").write_text("")  # and a git that was killed
    second = commit(repo, MAIN_C, "return 0;", "return 5;", "five")
    tree = source.prepare(source.SourceRequest(repo, rev="HEAD"), work)
    assert tree.origin.git["head"] == second and "return 5;" in (tree.path / MAIN_C).read_text()


def test_repro_takes_the_commit_that_ran_or_refuses_a_changed_dirty_tree(repo, tmp_path):
    from harness.errors import InputError
    from harness.jobs import repro_options
    from harness.pipeline import Options

    head = git(repo, "rev-parse", "HEAD")
    clean = source.git_state(repo)
    res = tmp_path / "res"
    res.mkdir()

    def recorded(state):
        (res / "results.json").write_text(json.dumps({
            "verdict": "fail", "profile": "x86_64-vtd", "suite": "access", "kernel": {"git": state},
            "inputs": {"kernel_src": str(repo)},
            "tests": [{"name": "f.v.t", "status": "fail", "duration_s": 1.0, "binary": "iommufd"}]}))

    recorded(clean)
    commit(repo, MAIN_C, "return 0;", "return 9;", "moved on")
    assert repro_options(res, None, Options.of(work=tmp_path / "w")).kernel.rev == head
    (repo / MAIN_C).write_text("dirty\n")
    recorded(source.git_state(repo))
    assert repro_options(res, None, Options.of(work=tmp_path / "w")).kernel.rev is None  # the same dirty tree: as it is
    (repo / MAIN_C).write_text("dirtier\n")
    with pytest.raises(InputError, match="is not the tree that ran"):
        repro_options(res, None, Options.of(work=tmp_path / "w"))


def test_an_exported_commit_is_not_compared_again_when_nothing_changed(repo, tmp_path, monkeypatch):
    """A no-change run on an immutable origin (an exported commit, like an
    extracted Debian package) skips the copy; another commit syncs again."""
    from harness import proc

    work = WorkDir(tmp_path / "w").prepare()
    source.prepare(source.SourceRequest(repo, rev="HEAD"), work)
    calls = []
    real = proc.run
    monkeypatch.setattr(proc, "run", lambda argv, **kw: (calls.append(str(argv[0])), real(argv, **kw))[1])
    again = source.prepare(source.SourceRequest(repo, rev="HEAD"), work)
    assert again.changed == () and "rsync" not in calls
    commit(repo, MAIN_C, "return 0;", "return 4;", "four")
    moved = source.prepare(source.SourceRequest(repo, rev="HEAD"), work)
    assert moved.changed == (MAIN_C,) and "rsync" in calls
    # a working tree is always compared: its files change under the same HEAD
    calls.clear()
    source.prepare(source.SourceRequest(repo), work)
    source.prepare(source.SourceRequest(repo), work)
    assert calls.count("rsync") == 2
