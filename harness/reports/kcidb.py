"""A run as KernelCI KCIDB I/O data (``kcidb.json``), for CI dashboards.

KCIDB models one checkout (source + patches) -> builds -> tests.  Every object
carries ``origin`` (``[a-z0-9_]+``) and an ``id`` of the form
``origin:local-id``.  The ids are chosen so that resubmissions merge instead
of duplicating:

* checkout: ``iommufd_harness:checkout-<hash of source, version, patchset>``
  - the same source and patches are the same checkout, whichever run built it;
* build: ``iommufd_harness:build-<vmlinux build-id>`` - an unchanged kernel
  reused by a later run is the same build (the run's name if there was none);
* tests: ``iommufd_harness:<run>/<binary>/<test>`` - one per test per run.

Test paths are ``kselftest.iommu.<binary>.<fixture>.<variant>.<test>``
(characters KCIDB does not allow in a path become ``_``); a ``boot`` test
says whether the guest came up.

Statuses (KCIDB: FAIL, ERROR, MISS, PASS, DONE, SKIP):

=========  ======  =========================================================
harness    KCIDB   why
=========  ======  =========================================================
pass       PASS
fail       FAIL    the test reported the kernel faulty
skip       SKIP
crash      FAIL    the kernel died under the test: the tested code is faulty
                   (``misc.harness_status`` keeps ``crash``)
timeout    ERROR   the test did not complete; the code's state is unknown
notrun     MISS    not run because of an earlier crash or a harness problem
=========  ======  =========================================================

Flaky tests (see :mod:`harness.reports.baseline`) are PASS with ``misc.flaky``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from harness.errors import HarnessError, ToolMissing
from harness.reports.baseline import is_flaky
from harness.reports.results import RunRecord

ORIGIN = "iommufd_harness"
SCHEMA_VERSION = (5, 3)  # the latest kcidb-io ships (kcidb_io.schema.LATEST); tests check it
STATUS = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP", "crash": "FAIL", "timeout": "ERROR", "notrun": "MISS"}
PATH_PREFIX = "kselftest.iommu"
MAX_EXCERPT = 16384  # the schema's maxLength for log_excerpt
_PATH_BAD = re.compile(r"[^A-Za-z0-9_-]+")
_ORIGIN_RE = re.compile(r"^[a-z0-9_]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class KcidbError(HarnessError):
    stage = "kcidb"


def kcidb_path(binary: str, name: str) -> str:
    """A KCIDB path (dot-separated ``[A-Za-z0-9_-]+`` parts) for a selftest case."""
    names = name.split(".")
    parts = [*PATH_PREFIX.split("."), *([] if names[0] == binary else [binary or "selftest"]), *names]
    return ".".join(p for p in (_PATH_BAD.sub("_", part).strip("_") for part in parts) if p)


def run_id(run: RunRecord) -> str:
    """The run's own name: its results dir's name, which is unique per run."""
    if run.results_dir:
        return Path(run.results_dir).name
    key = f"{run.started}|{run.profile}|{run.suite}|{run.kernel.get('build_id', '')}"
    return "run-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def patchset_hash(patches: list[dict]) -> str | None:
    """KCIDB's patchset hash: sha256 over the patches' newline-terminated
    sha256 hashes; '' when no patches were applied (as the schema says);
    None when a patch's hash is unknown, so no wrong hash is claimed."""
    hashes = [p.get("sha256", "") for p in patches]
    if not all(_SHA256.match(h) for h in hashes):
        return None
    return hashlib.sha256("".join(h + "\n" for h in hashes).encode()).hexdigest() if hashes else ""


def _error_for(run: RunRecord, *stages: str) -> str:
    """The run's error message from one of ``stages`` (errors render as 'error [stage]: ...')."""
    for e in run.errors:
        if any(e.startswith(f"error [{s}]") for s in stages):
            return e
    return ""


def _excerpt(text: str) -> str:
    text = text.replace("\x00", "")
    return text if len(text) <= MAX_EXCERPT else "[...]\n" + text[-(MAX_EXCERPT - 6):]


def _url(base: str | None, rel: str) -> str | None:
    return f"{base.rstrip('/')}/{rel}" if base else None


def to_kcidb(run: RunRecord, origin: str = ORIGIN, artifacts_url: str | None = None) -> dict:
    """The run as KCIDB I/O data (one checkout, one build, its tests).

    ``artifacts_url``: where the results dir is published (e.g. a CI job's
    artifacts); when given, logs and patches are linked from there.  Local
    paths are never put in URLs: they mean nothing to a dashboard.
    """
    if not _ORIGIN_RE.match(origin):
        raise ValueError(f"KCIDB origin must match [a-z0-9_]+, not {origin!r}")
    k = run.kernel
    started = {"start_time": run.started} if run.started else {}
    rid = run_id(run)
    pset = patchset_hash(run.patches)

    patch_key = pset if pset is not None else ",".join(f"{p.get('name')}:{p.get('sha256')}" for p in run.patches)
    ident = "|".join([k.get("source", ""), k.get("version", ""), patch_key or "-"])
    checkout_id = f"{origin}:checkout-{hashlib.sha256(ident.encode()).hexdigest()[:20]}"
    n = len(run.patches)
    checkout: dict = {
        "id": checkout_id, "origin": origin, **started,
        "comment": f"Linux {k.get('version', '?')} from {k.get('source') or 'unknown source'}"
                   + (f" + {n} patch{'es' if n != 1 else ''}" if n else ""),
        "misc": {"source": k.get("source", ""), "version": k.get("version", ""),
                 "patches": [{key: p.get(key, "") for key in ("name", "subject", "sha256")} for p in run.patches]},
    }
    if pset is not None:
        checkout["patchset_hash"] = pset
    if artifacts_url and run.patches:
        checkout["patchset_files"] = [{"name": p["name"], "url": _url(artifacts_url, f"logs/patches/{p['name']}")}
                                      for p in run.patches if p.get("name") and "/" not in p["name"]]
    patch_error = _error_for(run, "patches")
    if patch_error:
        checkout["valid"] = False
        checkout["log_excerpt"] = _excerpt(patch_error)
    elif "config" in run.stages or ("patches" in run.stages and not run.errors):
        checkout["valid"] = True  # the series applied: the run went on to configure, or ended cleanly

    build_id = f"{origin}:build-{k['build_id']}" if k.get("build_id") else f"{origin}:build-{rid}"
    build: dict = {
        "id": build_id, "origin": origin, "checkout_id": checkout_id, **started,
        "config_name": "tinyconfig+iommufd",
        "misc": {key: k[key] for key in ("build_id", "config_sha256", "rebuilt") if key in k},
    }
    arch = k.get("arch") or run.profile.split("-", 1)[0]
    if re.fullmatch(r"[a-z0-9_]+", arch or ""):
        build["architecture"] = arch
    if k.get("toolchain"):
        build["compiler"] = k["toolchain"]
    if "build" in run.stages:
        build["duration"] = float(run.stages["build"])
    build_error = _error_for(run, "config", "build")
    if k.get("build_id"):
        build["status"] = "PASS"
    elif build_error:
        build["status"] = "FAIL"
        build["log_excerpt"] = _excerpt(build_error)
    if artifacts_url and "build" in run.stages:
        build["log_url"] = _url(artifacts_url, "logs/build.log")

    q, g = run.qemu, run.guest
    environment = {
        "comment": f"QEMU {q.get('version', '?')} {run.profile} ({q.get('accel', '?')})",
        "misc": {"profile": run.profile, "qemu_version": q.get("version", ""), "accel": q.get("accel", ""),
                 "accel_reason": q.get("accel_reason", ""), "iommus": list(g.get("iommus", [])),
                 "hugepages": g.get("hugepages", 0)},
    }
    splats: dict[str, list[dict]] = {}  # test name ("" for none) -> its kernel splats
    for s in run.kernel.get("splats", []) or []:
        if isinstance(s, dict):
            entry = {key: str(s.get(key, "")) for key in ("kind", "title", "signature")}
            splats.setdefault(str(s.get("test") or ""), []).append(entry)
    tests: list[dict] = []
    boot = _boot_test(run, origin, rid, build_id, started, environment, artifacts_url)
    if boot:
        if splats.get(""):
            boot["misc"]["splats"] = splats[""]  # not during any test: boot or teardown
        tests.append(boot)
    for t in run.tests:
        misc: dict = {"harness_status": t.status, "binary": t.binary, "suite": run.suite}
        if t.reason:
            misc["reason"] = t.reason
        if is_flaky(t):
            misc["flaky"] = True
        if t.name in splats:
            misc["splats"] = splats[t.name]
        test: dict = {
            "id": f"{origin}:{rid}/{t.binary or 'selftest'}/{t.name}", "origin": origin, "build_id": build_id,
            "path": kcidb_path(t.binary, t.name), "comment": t.name, "status": STATUS[t.status],
            **started, "duration": float(t.duration_s), "environment": environment, "misc": misc,
        }
        if t.status != "pass" or is_flaky(t):
            # no log_url without artifacts_url, so the excerpt is the test's whole TAP (tail if long)
            text = (f"# harness: {t.reason}\n" if t.reason else "") + t.log
            if text.strip():
                test["log_excerpt"] = _excerpt(text)
        if artifacts_url and t.binary:
            test["log_url"] = _url(artifacts_url, f"tap/{t.binary}.tap")
        tests.append(test)

    return {"version": {"major": SCHEMA_VERSION[0], "minor": SCHEMA_VERSION[1]},
            "checkouts": [checkout], "builds": [build], "tests": tests}


def _boot_test(run: RunRecord, origin: str, rid: str, build_id: str, started: dict, environment: dict,
               artifacts_url: str | None) -> dict | None:
    """A ``boot`` test: PASS once the guest ran the kernel, FAIL if booting it
    failed; none when the run never got to boot (a build error, say)."""
    error = _error_for(run, "boot", "target")
    if run.guest.get("kernel_release"):
        status = "PASS"
    elif error:
        status = "FAIL"
    else:
        return None
    test = {"id": f"{origin}:{rid}/boot", "origin": origin, "build_id": build_id, "path": "boot",
            "status": status, **started, "environment": environment,
            "misc": {"guest_build_id": run.guest.get("build_id", ""),
                     "kernel_release": run.guest.get("kernel_release", "")}}
    if "boot" in run.stages:
        test["duration"] = float(run.stages["boot"])
    if error:
        test["log_excerpt"] = _excerpt(error)
    if artifacts_url:
        test["log_url"] = _url(artifacts_url, "console.log")
    return test


def validate(data: dict) -> None:
    """Check ``data`` against the latest KCIDB schema kcidb-io ships, and
    that every test names a build and every build a checkout in the data
    (the schema alone allows dangling ids, which dashboards then drop)."""
    try:
        import jsonschema
        from kcidb_io.schema import LATEST
    except ImportError as e:
        raise ToolMissing(f"cannot validate KCIDB data: kcidb-io is not installed ({e})",
                          "pip install kcidb-io") from None
    try:
        LATEST.validate_exactly(data)
    except jsonschema.exceptions.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise KcidbError(f"not valid KCIDB v{LATEST.major}.{LATEST.minor} data at {where}: {e.message}") from None
    checkouts = {c["id"] for c in data.get("checkouts", [])}
    builds = {b["id"] for b in data.get("builds", [])}
    for b in data.get("builds", []):
        if b["checkout_id"] not in checkouts:
            raise KcidbError(f"build {b['id']} names checkout {b['checkout_id']}, which is not in the data")
    for t in data.get("tests", []):
        if t["build_id"] not in builds:
            raise KcidbError(f"test {t['id']} names build {t['build_id']}, which is not in the data")
