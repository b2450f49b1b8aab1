"""Stage 4 (build): the kernel image, its uapi headers and the iommufd selftests.

Everything is built out of tree in the build dir.  A build stamp records what
was built from which tree generation and config, so a re-run with nothing
changed does not even start make.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from harness import elfinfo, proc
from harness.errors import BuildError
from harness.stages.progress import BuildProgress
from harness.toolchain import Toolchain

STAMP = ".harness-build.json"
SELFTESTS = ("iommufd", "iommufd_fail_nth")
# how the selftests are built; in the stamp's key, so a build dir whose
# selftests were built another way (before -MD) is built again once
SELFTESTS_CFLAGS = "-MD"


@dataclass(frozen=True)
class BuildRequest:
    tree: Path
    build_dir: Path
    toolchain: Toolchain
    config_sha256: str
    tree_generation: str  # changes whenever the working copy changes
    timeout: float = 3600.0
    extra_targets: tuple[str, ...] = ()  # more make targets, e.g. a board's dtb ("rockchip/rk3568-odroid-m1.dtb")


@dataclass(frozen=True)
class KernelBuild:
    image: Path  # bzImage / Image
    vmlinux: Path
    build_id: str
    headers: Path  # <build>/usr/include
    selftests: dict[str, Path]  # binary name -> path
    rebuilt: bool


def _first_error(log: Path) -> str | None:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    pat = re.compile(r"^(\S+?:\d+(?::\d+)?): (?:fatal )?error: (.*)$", re.M)
    m = pat.search(text)
    if m:
        return f"{m.group(1)}: {m.group(2)}"
    m = re.search(r"^.*(?:undefined reference to|No rule to make target|\*\*\*).*$", text, re.M)
    return m.group(0).strip() if m else None


def _make(argv, req: BuildRequest, log: Path, what: str, env: dict | None = None,
          progress: BuildProgress | None = None) -> None:
    try:
        res = proc.run(argv, timeout=req.timeout, log=log, keep_output=False, env=env,
                       on_output=progress.feed if progress is not None else None)
    except BaseException:
        if progress is not None:
            progress.done(quiet=True)  # Ctrl-C: no live line left behind
        raise
    if progress is not None:
        progress.done()
    if res.timed_out or res.returncode != 0:
        first = _first_error(log)
        why = f"timed out after {req.timeout:.0f} s" if res.timed_out else "failed"
        raise BuildError(f"{what} {why}" + (f": {first}" if first else ""),
                         "see the log for the full compiler output", log=str(log))


def _stamp_key(req: BuildRequest) -> str:
    blob = json.dumps([req.config_sha256, req.tree_generation, req.toolchain.arch,
                       req.toolchain.cross_compile, SELFTESTS, SELFTESTS_CFLAGS])
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_stamp(stamp: Path) -> tuple[dict, int]:
    """What the build dir's stamp says, and when it was written (ns); ({}, 0)
    if it is missing or unreadable."""
    try:
        facts = json.loads(stamp.read_text())
        return (facts, stamp.stat().st_mtime_ns) if isinstance(facts, dict) else ({}, 0)
    except (OSError, ValueError):
        return {}, 0


def _checked_build_id(facts: dict, written: int, files: list[Path]) -> str | None:
    """The build-id the stamp recorded when it checked ``files`` (vmlinux
    and the selftests), if none of them changed since; None: read them."""
    try:
        if not facts.get("checked") or any(f.stat().st_mtime_ns > written for f in files):
            return None
        return str(facts["build_id"]) or None
    except (OSError, KeyError):
        return None


def _cold_steps(facts: dict) -> int:
    """Kbuild steps of the last cold build of this build dir (0: none known)."""
    try:
        return int(facts.get("cold_steps") or 0)
    except (ValueError, TypeError):
        return 0


def _drop_stale(binaries: dict[str, Path], src: Path) -> None:
    """The selftests' Makefile makes each binary depend on its .c file
    alone: a series that changes iommufd_utils.h, the mock driver's
    iommufd_test.h or the uapi headers would leave the old binaries in
    place.  gcc lists what each one read (-MD: ``<binary>.d`` next to it);
    a binary older than any of those files, or built without the list, is
    removed so that make builds it again."""
    for binary in binaries.values():
        try:
            built = binary.stat().st_mtime
        except FileNotFoundError:
            continue
        try:
            text = binary.with_name(binary.name + ".d").read_text()
        except OSError:
            binary.unlink()
            continue
        deps = text.replace("\\\n", " ").split(":", 1)[-1].split()
        for dep in deps:
            path = src / dep  # relative to the selftests' dir, where make ran gcc (absolute ones stay as they are)
            try:
                stale = path.stat().st_mtime > built
            except OSError:
                stale = True
            if stale:
                binary.unlink()
                break


def _estimate(previous_cold: int, cold: bool, tc: Toolchain) -> int:
    """Kbuild steps to expect: for a cold build, the last cold build of this
    build dir, else the architecture's recorded figure; an incremental build
    has no estimate (it is short)."""
    return (previous_cold or tc.spec.cold_build_steps) if cold else 0


def build(req: BuildRequest, log: Path, show=None) -> KernelBuild:
    """``show(line, final)``: where the kernel step's live progress goes."""
    tc = req.toolchain
    tc.check()
    proc.require_tool("make")
    image = req.build_dir / tc.image_path
    vmlinux = req.build_dir / "vmlinux"
    headers = req.build_dir / "usr/include"
    st_out = req.build_dir / "kselftest/iommu"
    selftests = {name: st_out / name for name in SELFTESTS}
    extra = [req.build_dir / "arch" / tc.spec.srcarch / "boot/dts" / t for t in req.extra_targets]
    outputs = [image, vmlinux, headers, *selftests.values(), *extra]
    stamp = req.build_dir / STAMP
    key = _stamp_key(req)
    rebuilt = False
    progress = None
    previous_cold, cold = 0, False
    facts, written = _read_stamp(stamp)
    if not (facts.get("key") == key and all(p.exists() for p in outputs)):
        cold = not vmlinux.exists()
        previous_cold = _cold_steps(facts)
        estimate = _estimate(previous_cold, cold, tc)
        stamp.unlink(missing_ok=True)
        mk = tc.make_argv(req.tree, req.build_dir, jobs=True)
        env = tc.ccache_env(req.tree, req.build_dir)
        if show is not None:
            progress = BuildProgress(f"building {tc.image_target} ({'cold' if cold else 'incremental'})", estimate,
                                     show)
        _make(mk + [tc.image_target], req, log, f"kernel build (make {tc.image_target})", env, progress)
        if req.extra_targets:
            _make(mk + list(req.extra_targets), req, log, f"make {' '.join(req.extra_targets)}", env)
        _make(mk + ["headers"], req, log, "make headers", env)
        st_argv = ["make", "-C", str(req.tree / "tools/testing/selftests/iommu"),
                   f"ARCH={tc.kernel_arch}", f"OUTPUT={st_out}",
                   f"KHDR_INCLUDES=-isystem {headers}", "USERLDFLAGS=-static", f"USERCFLAGS={SELFTESTS_CFLAGS}",
                   f"-j{tc.jobs or 2}"]
        if tc.cross_compile:
            st_argv.append(f"CROSS_COMPILE={tc.cross_compile}")
        st_out.mkdir(parents=True, exist_ok=True)
        _drop_stale(selftests, req.tree / "tools/testing/selftests/iommu")
        _make(st_argv, req, log, "iommufd selftests build")
        missing = [str(p) for p in outputs if not p.exists()]
        if missing:
            raise BuildError(f"the build finished but did not produce {', '.join(missing)}", log=str(log))
        rebuilt = True
    build_id = None if rebuilt else _checked_build_id(facts, written, [vmlinux, *selftests.values()])
    if build_id is None:
        for name, path in selftests.items():
            elfinfo.check_binary(path, tc.elf_machine, static=True, what=f"selftest {name}")
        build_id = elfinfo.build_id(vmlinux)
        if rebuilt:
            done = {"key": key}
            if progress is not None:
                done["steps"] = progress.steps
                done["cold_steps"] = progress.steps if cold else previous_cold
        else:
            done = facts  # this very build's stamp, now with what was checked
        done.update(build_id=build_id, checked=True)
        stamp.write_text(json.dumps(done))
    return KernelBuild(image, vmlinux, build_id, headers, selftests, rebuilt)

