"""examples/ci: the GitLab CI pipeline and the GitHub Actions workflow that
shard profiles x suites over runners and merge the cells into one verdict.
Both are validated offline against the schemas the CI systems publish (as
check-jsonschema vendors them), name only profiles and suites that exist,
and their merge step, run as written on the artifacts laid out as each CI
system lays them out, gives the verdict."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import profiles, suites

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "ci"
CHECK = Path(sys.executable).parent / "check-jsonschema"
GOLDEN = REPO / "tests" / "golden"
CASES = {"gitlab-ci.yml": "vendor.gitlab-ci", "github-workflow.yml": "vendor.github-workflows"}


def check(path: Path, schema: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHECK), "--builtin-schema", schema, str(path)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_example_is_valid_against_its_ci_systems_schema(name):
    res = check(EXAMPLES / name, CASES[name])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("name, broken", [
    ("gitlab-ci.yml", lambda d: d["cell"].update(parallel={"matrix": "x86_64-vtd"})),
    ("github-workflow.yml", lambda d: d["jobs"]["cell"].update(strategy={"matrix": 3})),
])
def test_a_broken_pipeline_is_refused_by_the_same_check(name, broken, tmp_path):
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    broken(doc)
    (tmp_path / name).write_text(yaml.safe_dump(doc))
    assert check(tmp_path / name, CASES[name]).returncode != 0


def matrix(name: str) -> tuple[list[str], list[str]]:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    if name == "gitlab-ci.yml":
        [m] = doc["cell"]["parallel"]["matrix"]
        return m["PROFILE"], m["SUITE"]
    m = doc["jobs"]["cell"]["strategy"]["matrix"]
    return m["profile"], m["suite"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_matrix_names_profiles_and_suites_that_exist(name):
    shards, tests = matrix(name)
    assert shards and tests
    for p in shards:
        profiles.load(p)
    for s in tests:
        suites.load(s)


def merge_command(name: str) -> list[str]:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    if name == "gitlab-ci.yml":
        lines = doc["verdict"]["script"]
    else:
        lines = [s["run"] for s in doc["jobs"]["verdict"]["steps"] if "run" in s]
    [line] = [x for x in lines if "report --merge" in x]
    argv = shlex.split(line)
    assert argv[0] in ("$HARNESS", ".venv/bin/iommufd-harness")
    return [sys.executable, "-m", "harness", *argv[1:]]


def lay_out(name: str, where: Path, golden: dict[str, str]) -> None:
    """Each cell's results dir where the CI system puts its artifacts for
    the merge job: GitLab extracts every job's results/ into one results/;
    GitHub downloads each artifact into artifacts/<artifact name>/."""
    for cell, g in golden.items():
        d = where / ("results" if name == "gitlab-ci.yml" else f"artifacts/results-{cell}") / cell
        d.mkdir(parents=True)
        (d / "results.json").write_text((GOLDEN / g).read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_merge_step_as_written_gives_the_verdict_over_the_artifacts(name, tmp_path):
    argv = merge_command(name)
    lay_out(name, tmp_path, {"x86_64-vtd-full": "results-x86_64-vtd-full-fail.json",
                             "x86_64-virtio-iommu-full": "results-x86_64-vtd-full-pass.json"})
    res = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr  # one cell failed: the pipeline fails, on this job
    merged = json.loads((tmp_path / "merged" / "merged.json").read_text())
    assert merged["verdict"] == "fail" and len(merged["cells"]) == 2
    assert (tmp_path / "merged" / "junit.xml").is_file() and (tmp_path / "merged" / "report.html").is_file()
