"""The one place a reproducer command line is rendered."""

from __future__ import annotations

import shlex

from harness.reports.results import outside_phase


def reproducer(profile: str, suite: str, test: str, inputs: dict | None = None, work: str | None = None,
               alongside: list[str] | tuple[str, ...] = ()) -> str:
    """The command that runs ``test`` again on the same kernel and machine
    (for ``kernel.boot`` and the other reports outside any test, the suite):
    ``inputs`` as a run records them (``RunRecord.inputs``: kernel_src, rev,
    commits, default_patches, patches, kconfig_add, fragments, config, debug, cmdline,
    parallel, lab, board); ``work``: the run's --work when it was not the default one (its
    builds are there).  A test of a --parallel run is run again with the tests
    that ran ``alongside`` it, in as many lanes: a race needs its partner."""
    i = inputs or {}
    args = [f"--profile {shlex.quote(profile)}", f"--suite {shlex.quote(suite)}"]
    if work:
        args.insert(0, f"--work {shlex.quote(str(work))}")
    parallel = int(i.get("parallel") or 1)
    if not outside_phase(test):  # a report at boot or between tests: the suite again reproduces it
        names = ",".join([test, *alongside]) if parallel > 1 else test
        quoted = f"'{names}'" if "'" not in names else shlex.quote(names)  # quoted: no shell expands a name
        args.append(f"--tests {quoted}")
    if parallel > 1:
        args.append(f"--parallel {parallel}")
    if i.get("kernel_src"):
        args.append(f"--kernel-src {shlex.quote(i['kernel_src'])}")
    if i.get("rev"):
        args.append(f"--rev {shlex.quote(i['rev'])}")
    if i.get("commits"):
        args.append(f"--commits {shlex.quote(i['commits'])}")
    if i.get("default_patches") is False:
        args.append("--no-default-patches")
    args += [f"--patches {shlex.quote(p)}" for p in i.get("patches", [])]
    args += [f"--kconfig-add {shlex.quote(k)}" for k in i.get("kconfig_add", [])]
    args += [f"--fragment {shlex.quote(f)}" for f in i.get("fragments", [])]
    if i.get("config"):
        args.append(f"--config {shlex.quote(i['config'])}")
    if i.get("debug"):
        args.append(f"--debug {','.join(i['debug'])}")
    if i.get("cmdline"):
        args.append(f"--cmdline {shlex.quote(i['cmdline'])}")
    if i.get("lab"):
        args.append(f"--lab {shlex.quote(i['lab'])}")
    if i.get("board"):
        args.append(f"--board {shlex.quote(i['board'])}")
    return "iommufd-harness run " + " ".join(args)


def repro_line(results_dir: str, test: str | None = None, work: str | None = None) -> str:
    """The short reproducer: the same kernel and machine, read back from the
    results dir (``iommufd-harness repro``)."""
    line = f"iommufd-harness repro {shlex.quote(str(results_dir))}"
    if work:
        line += f" --work {shlex.quote(str(work))}"
    if test:
        line += f" '{test}'" if "'" not in test else f" {shlex.quote(test)}"
    return line
