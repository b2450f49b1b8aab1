"""Gate verdicts: compare a run with a baseline and report what changed.

A CI gate asks "did this change break something?", not "is everything
green?": a test that failed before the change and still fails must not block
a merge, while a test that stops running, starts skipping or crashes the
kernel must.  A baseline is one of

* a previous run: its results dir or its ``results.json``; every test's
  status there is what this run is expected to show;
* a checked-in expectations file, ``selftests/baselines/<profile>-<suite>.toml``
  (or the directory holding them), which says what a known-good kernel does::

      format = 1
      profile = "x86_64-vtd"
      suite = "access"
      count = 24                      # optional: fewer tests than this is a regression

      [tests]                         # name or fnmatch glob -> "pass" | "skip" | a list of them
      "iommufd_ioas.*.access_pin" = "pass"

      [[known]]                       # failures that must not block the gate
      test = "iommufd_ioas.*.area_auto_iova"
      status = "fail"                 # or a list: ["fail", "timeout"]
      reason = "why it fails, who owns it"
      link = "https://..."            # optional

  Which expectation applies to a test: the first ``[[known]]`` entry that
  matches it, else the ``[tests]`` entry with the exact name, else the
  longest (most specific) matching glob.  A test no entry matches is new.

Reruns: :func:`mark_flaky` folds a failed test and its reruns into one
record; a test that failed and then passed is *flaky*, which is listed but
does not fail the gate.  ``results.STATUSES`` has no ``flaky`` status, so a
flaky test is recorded as ``pass`` with a reason starting ``flaky:``.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from harness.errors import InputError
from harness.reports.results import BAD, STATUSES, RunRecord, TestRecord

FORMAT = 1
FLAKY_MARK = "flaky:"
GOOD = frozenset({"pass", "skip"})
# How bad a status is; a move to a worse status is a regression.  notrun ranks
# with fail: the test gave no result, which is as bad as a failing one for a gate.
SEVERITY = {"pass": 0, "skip": 1, "fail": 2, "notrun": 2, "timeout": 3, "crash": 4}
_GLOB_CHARS = set("*?[")
_TOML_KEYS = {"format", "profile", "suite", "count", "kernel", "description", "tests", "known"}
_KNOWN_KEYS = {"test", "status", "reason", "link"}


@dataclass(frozen=True)
class Expectation:
    """What a baseline says about the tests ``pattern`` matches."""

    pattern: str
    statuses: frozenset[str]
    reason: str = ""
    link: str = ""

    @property
    def is_glob(self) -> bool:
        return bool(_GLOB_CHARS & set(self.pattern))

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern) if self.is_glob else name == self.pattern

    @property
    def worst(self) -> str:
        return max(self.statuses, key=SEVERITY.__getitem__)


@dataclass(frozen=True)
class Baseline:
    """Expected statuses for one profile and suite, from wherever they came."""

    source: str  # what to call it in reports: the file or results dir
    profile: str = ""
    suite: str = ""
    count: int | None = None
    tests: tuple[Expectation, ...] = ()
    known: tuple[Expectation, ...] = ()
    kernel: str = ""  # the kernel it was recorded on: "6.12.117", maybe with more ("... @ v6.12-3-gabc")

    def expectation(self, name: str) -> Expectation | None:
        for k in self.known:
            if k.matches(name):
                return k
        exact = [e for e in self.tests if not e.is_glob and e.pattern == name]
        if exact:
            return exact[-1]
        globs = [e for e in self.tests if e.is_glob and e.matches(name)]
        return max(globs, key=lambda e: len(e.pattern)) if globs else None


@dataclass(frozen=True)
class Change:
    """One test whose status is worth a line in a report."""

    name: str
    before: str  # expected status(es), "a|b"; "" for a test the baseline does not know
    after: str  # status in this run
    kind: str  # regressions: "new failure", "new crash", "new timeout", "not run", "now skipped",
    #            "worse", "new test fails"; improvements: "fixed", "now passes";
    #            "still failing" (known failures); "flaky"
    reason: str = ""  # known failure's reason, or the test's own
    link: str = ""


@dataclass(frozen=True)
class Comparison:
    """The result of comparing a run with a baseline; see :meth:`gate_verdict`."""

    baseline: str
    regressions: tuple[Change, ...] = ()
    improvements: tuple[Change, ...] = ()
    known_failures: tuple[Change, ...] = ()
    flaky: tuple[Change, ...] = ()
    disappeared: tuple[str, ...] = ()  # baseline names, or globs that now match nothing
    new_tests: tuple[str, ...] = ()
    unchanged: int = 0
    count: int = 0
    expected_count: int | None = None
    kernel_before: str = ""  # the baseline's kernel, as it names it
    kernel_after: str = ""  # this run's

    @property
    def kernel_differs(self) -> bool:
        """The baseline was recorded on another kernel: its expectations may
        not hold for this one (tests added or removed upstream, known
        failures fixed), which a reader of the verdict must know."""
        if not self.kernel_before or not self.kernel_after:
            return False
        return _version_of(self.kernel_before) != _version_of(self.kernel_after)

    def notes(self) -> list[str]:
        """What a reader should know that is not a regression."""
        if self.kernel_differs:
            return [f"the baseline was recorded on kernel {self.kernel_before}; this run's kernel is "
                    f"{self.kernel_after}"]
        if self.kernel_before and not self.kernel_after:
            return [f"the baseline was recorded on kernel {self.kernel_before}; this run has no kernel version"]
        return []

    @property
    def count_dropped(self) -> bool:
        return self.expected_count is not None and self.count < self.expected_count

    @property
    def regressed(self) -> bool:
        return bool(self.regressions or self.disappeared or self.count_dropped)

    def gate_verdict(self, run_verdict: str) -> str:
        """``error`` stays ``error`` (no trustworthy result to compare);
        otherwise ``fail`` exactly when something got worse than the baseline,
        so known failures pass the gate and a green run that lost tests does not."""
        if run_verdict not in ("pass", "fail", "error"):
            raise ValueError(f"bad run verdict {run_verdict!r}")
        if run_verdict == "error":
            return "error"
        return "fail" if self.regressed else "pass"

    def reasons(self) -> list[str]:
        """Why the gate fails, one short line each (empty when it passes)."""
        out = [f"{len(self.regressions)} regression(s)"] if self.regressions else []
        if self.disappeared:
            out.append(f"{len(self.disappeared)} test(s) disappeared")
        if self.count_dropped:
            out.append(f"{self.count} tests ran, the baseline expects {self.expected_count}")
        return out

    def to_json(self) -> dict:
        def changes(cs: tuple[Change, ...]) -> list[dict]:
            return [asdict(c) for c in cs]

        return {"baseline": self.baseline, "regressed": self.regressed, "reasons": self.reasons(),
                "regressions": changes(self.regressions), "improvements": changes(self.improvements),
                "known_failures": changes(self.known_failures), "flaky": changes(self.flaky),
                "disappeared": list(self.disappeared), "new_tests": list(self.new_tests),
                "unchanged": self.unchanged, "count": self.count, "expected_count": self.expected_count,
                "kernel": {"baseline": self.kernel_before, "run": self.kernel_after, "differs": self.kernel_differs},
                "notes": self.notes()}


def _version_of(kernel: str) -> str:
    """The release in a kernel description: "6.12.117 + kernel-patches/default" -> "6.12.117"."""
    return kernel.split()[0] if kernel.split() else ""


def run_kernel(run: RunRecord) -> str:
    """How a run names its kernel: the release, and the git commit when it has one."""
    version = str(run.kernel.get("version") or "")
    git = run.kernel.get("git") or {}
    if version and git.get("describe"):
        return f"{version} ({git['describe']})"
    return version


# -- comparing --------------------------------------------------------------------


def is_flaky(test: TestRecord) -> bool:
    return test.status == "pass" and test.reason.startswith(FLAKY_MARK)


def _classify(exp: Expectation, after: str) -> str:
    """'' when the run matches the expectation, else the kind of change."""
    if after in exp.statuses:
        return "still failing" if after in BAD else ""
    if after == "pass":
        return "fixed" if exp.statuses & BAD else "now passes"
    if after == "skip":
        return "now skipped"  # whatever it did before, it no longer tests anything
    if not exp.statuses & BAD:
        return {"fail": "new failure", "crash": "new crash", "timeout": "new timeout", "notrun": "not run"}[after]
    # a known failure that fails differently: only a worse failure is news
    return "worse" if SEVERITY[after] > SEVERITY[exp.worst] else "still failing"


def compare(run: RunRecord, base: Baseline) -> Comparison:
    """Sort every test of ``run`` into regressions, improvements, known
    failures, flaky, new or unchanged, and find what the baseline has that the
    run lacks."""
    regressions: list[Change] = []
    improvements: list[Change] = []
    known: list[Change] = []
    flaky: list[Change] = []
    new: list[str] = []
    unchanged = 0
    used: set[Expectation] = set()
    for t in run.tests:
        exp = base.expectation(t.name)
        if exp is None:
            new.append(t.name)
            if t.status in BAD:
                regressions.append(Change(t.name, "", t.status, "new test fails", t.reason))
            continue
        used.add(exp)
        before = "|".join(sorted(exp.statuses, key=SEVERITY.__getitem__))
        if is_flaky(t):
            flaky.append(Change(t.name, before, t.status, "flaky", t.reason))
            continue
        kind = _classify(exp, t.status)
        if not kind:
            unchanged += 1
        elif kind == "still failing":
            known.append(Change(t.name, before, t.status, kind, exp.reason, exp.link))
        elif kind in ("fixed", "now passes"):
            improvements.append(Change(t.name, before, t.status, kind, exp.reason, exp.link))
        else:
            regressions.append(Change(t.name, before, t.status, kind, t.reason))
    # a run of some tests (--tests) misses only what it selected: the rest of
    # the baseline, and the suite's count, were not asked for
    globs = [g.strip() for g in str((run.inputs or {}).get("tests") or "").split(",") if g.strip()]
    disappeared = tuple(e.pattern for e in (*base.known, *base.tests) if e not in used
                        and (not globs or any(fnmatch.fnmatchcase(e.pattern, g) for g in globs)))
    return Comparison(base.source, tuple(regressions), tuple(improvements), tuple(known), tuple(flaky),
                      disappeared, tuple(new), unchanged, len(run.tests), None if globs else base.count,
                      base.kernel, run_kernel(run))


def mark_flaky(first: TestRecord, reruns: list[TestRecord]) -> TestRecord:
    """The one record to keep for a test that was run again after failing.

    Only a ``fail`` or ``timeout`` can be flaky: a kernel crash is a finding
    even if it does not reproduce, and ``notrun`` never ran.  If a rerun
    passed, the test is flaky: recorded as ``pass`` with a ``flaky:`` reason
    and every attempt's log, so the gate lists it without failing.  If none
    passed, the first failure stands, with the reruns noted in its reason.
    """
    if first.status not in ("fail", "timeout") or not reruns:
        return first
    attempts = [first.status] + [r.status for r in reruns]
    log = "\n".join([first.log] + [f"# --- rerun {i}: {r.status} ---\n{r.log}" for i, r in enumerate(reruns, 1)])
    passed = next((i for i, r in enumerate(reruns, 1) if r.status == "pass"), None)
    if passed is None:
        note = f"failed on {len(reruns)} rerun(s) too ({', '.join(attempts)})"
        return replace(first, reason=f"{first.reason}; {note}" if first.reason else note, log=log)
    reason = f"{FLAKY_MARK} {first.status}, then pass on rerun {passed} of {len(reruns)} ({', '.join(attempts)})"
    if first.reason:
        reason += f"; first attempt: {first.reason}"
    return replace(first, status="pass", reason=reason, log=log,
                   duration_s=first.duration_s + sum(r.duration_s for r in reruns))


# -- loading ----------------------------------------------------------------------


class NoExpectations(InputError):
    """A directory of expectations that has none for this profile and suite:
    not an error in the input, just nothing to compare with."""


def load_baseline(path: Path, profile: str, suite: str) -> Baseline:
    """A baseline for ``profile``/``suite`` from a results dir, a
    ``results.json``, an expectations ``.toml`` or a directory of them.

    A baseline for another profile or suite is refused: comparing across them
    reports every test as changed, which hides the real regressions.  A
    directory of expectations without a file for this profile and suite
    raises :class:`NoExpectations`.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "results.json").is_file():
            path = path / "results.json"
        elif (path / f"{profile}-{suite}.toml").is_file():
            path = path / f"{profile}-{suite}.toml"
        elif any(path.glob("*.toml")):
            raise NoExpectations(f"{path} has no expectations for profile {profile}, suite {suite} "
                                 f"({profile}-{suite}.toml)",
                                 f"record them: run once, then write {path / f'{profile}-{suite}.toml'}")
        else:
            raise InputError(f"baseline {path} holds neither results.json nor {profile}-{suite}.toml",
                             "pass a results dir, a results.json or an expectations file")
    if not path.is_file():
        raise InputError(f"baseline {path} does not exist")
    if path.suffix == ".toml":
        base = _load_toml(path)
    elif path.suffix == ".json":
        base = _load_results(path)
    else:
        raise InputError(f"baseline {path}: unknown kind of file",
                         "expected a results dir, results.json or selftests/baselines/<profile>-<suite>.toml")
    for what, want, have in (("profile", profile, base.profile), ("suite", suite, base.suite)):
        if want and have and want != have:
            raise InputError(f"baseline {path} is for {what} {have!r}, this run is {what} {want!r}",
                             f"use a baseline of the same {what}")
    return base


def from_run(run: RunRecord, source: str) -> Baseline:
    """Every test of a previous run, as an exact expectation of its status."""
    if not run.tests:
        raise InputError(f"baseline {source} has no test results (verdict {run.verdict})",
                         "use a run that got as far as running tests")
    tests = []
    for t in run.tests:
        status = "pass" if is_flaky(t) else t.status
        reason = f"{status} in the baseline run" if status in BAD else ""
        tests.append(Expectation(t.name, frozenset({status}), reason))
    return Baseline(source, run.profile, run.suite, len(run.tests), tuple(tests), kernel=run_kernel(run))


def _load_results(path: Path) -> Baseline:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("tests"), list):
            raise TypeError("not a results.json: no 'tests' list")
        run = RunRecord.from_json(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise InputError(f"baseline {path} is not a readable results.json: {e}") from None
    return from_run(run, str(path.parent if path.name == "results.json" else path))


def _statuses(value, where: str, allowed: frozenset[str]) -> frozenset[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}: status must be a status name or a list of them, not {value!r}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{where}: status {bad[0]!r} is not one of {', '.join(sorted(allowed))}")
    return frozenset(values)


def _load_toml(path: Path) -> Baseline:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"baseline {path} is not valid TOML: {e}") from None
    try:
        return _parse_toml(data, str(path))
    except (ValueError, TypeError) as e:
        raise InputError(f"baseline {path} is invalid: {e}",
                         "see the format in harness/baseline.py or selftests/baselines/") from None


def _parse_toml(data: dict, source: str) -> Baseline:
    unknown = sorted(set(data) - _TOML_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}")
    if data.get("format", FORMAT) != FORMAT:
        raise ValueError(f"format {data.get('format')!r} is not supported (this harness reads {FORMAT})")
    for key in ("profile", "suite"):
        if not isinstance(data.get(key, ""), str):
            raise TypeError(f"{key} must be a string")
    count = data.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be a positive integer, not {count!r}")
    tests_table = data.get("tests", {})
    if not isinstance(tests_table, dict):
        raise TypeError("[tests] must be a table of test name or glob = status")
    tests = tuple(Expectation(name, _statuses(v, f"[tests] {name!r}", GOOD)) for name, v in tests_table.items())
    known_list = data.get("known", [])
    if not isinstance(known_list, list):
        raise TypeError("known must be an array of tables ([[known]])")
    known = []
    for i, k in enumerate(known_list, 1):
        where = f"[[known]] #{i}"
        if not isinstance(k, dict):
            raise TypeError(f"{where} must be a table")
        extra = sorted(set(k) - _KNOWN_KEYS)
        if extra:
            raise ValueError(f"{where}: unknown key {extra[0]!r}")
        test, reason = k.get("test"), k.get("reason")
        if not isinstance(test, str) or not test:
            raise ValueError(f"{where}: 'test' (a name or glob) is required")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"{where} ({test}): 'reason' is required: say why it fails and who tracks it")
        link = k.get("link", "")
        if not isinstance(link, str):
            raise TypeError(f"{where} ({test}): 'link' must be a string")
        statuses = _statuses(k.get("status", "fail"), f"{where} ({test})", frozenset(STATUSES) - {"pass"})
        known.append(Expectation(test, statuses, reason.strip(), link))
    if not tests and not known:
        raise ValueError("no expectations: add a [tests] table or [[known]] entries")
    kernel = data.get("kernel", "")
    if not isinstance(kernel, str):
        raise TypeError("kernel must be a string: the release the expectations were recorded on")
    return Baseline(source, data.get("profile", ""), data.get("suite", ""), count, tests, tuple(known), kernel)

