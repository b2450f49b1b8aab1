"""Build figures: a one-file change, and a cold build, against ``make`` run
directly on the same tree (ccache off for both)."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

from harness.errors import HarnessError
from harness.bench.common import CHANGED_FILE, Figure, Kernel, NO_CCACHE, harness_argv, prepare, timed


def variants(origin: Path, out: Path) -> tuple[Path, Path, str, str]:
    """Two patches, each changing CHANGED_FILE in a different way that the
    compiler cannot ignore, and the two changed texts."""
    text = (origin / CHANGED_FILE).read_text()
    lines = text.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("#include")) + 1
    paths, texts = [], []
    for tag in ("a", "b"):
        new = lines[:at] + [f'static const char iommufd_bench_{tag}[] __used = "{tag}";\n'] + lines[at:]
        diff = "".join(difflib.unified_diff(lines, new, f"a/{CHANGED_FILE}", f"b/{CHANGED_FILE}"))
        p = out / f"bench-{tag}.patch"
        p.write_text(f"Subject: [PATCH] bench: one-file change {tag}\n\n---\n{diff}")
        paths.append(p)
        texts.append("".join(new))
    return paths[0], paths[1], texts[0], texts[1]


def make_with(k: Kernel, text: str, build_back: bool = False) -> tuple[float, int]:
    """The kernel image's make run directly on the working copy, with
    CHANGED_FILE holding ``text``: (seconds, exit code).  The file is put back
    afterwards and, with ``build_back``, built back, so the harness's next
    run starts from what it built itself."""
    target = k.tree / CHANGED_FILE
    kept = target.read_text()
    target.write_text(text)
    try:
        return timed(k.make, env=NO_CCACHE)
    finally:
        target.write_text(kept)
        if build_back:
            timed(k.make, env=NO_CCACHE)


def one_file_build(work: Path, profile: str, debug: tuple[str, ...], repeat: int, tmp: Path) -> Figure:
    fig = Figure("one-file build")
    debug_args = ["--debug", ",".join(debug)] if debug else []
    k = prepare(work, profile, debug, [])
    pa, pb, ta, tb = variants(k.origin, tmp)
    build = harness_argv("build", "--quiet", "--work", work, "--profile", profile, *debug_args)
    for i in range(repeat + 1):
        mine, other = (pa, tb) if i % 2 else (pb, ta)
        elapsed, code = timed(build + ["--patches", str(mine)], env=NO_CCACHE)
        if code != 0:
            raise HarnessError(f"bench: 'iommufd-harness build' failed (exit {code})")
        if i == 0:
            continue  # the first one only brings the tree to a variant
        fig.harness.append(elapsed)
        elapsed, code = make_with(k, other)
        if code != 0:
            raise HarnessError(f"bench: the direct make failed (exit {code}): {' '.join(k.make)}")
        fig.floor.append(elapsed)
    # back to the unchanged tree, so the runs after this one rebuild nothing
    timed(build, env=NO_CCACHE)
    return fig


def cold_build(work: Path, profile: str, debug: tuple[str, ...], repeat: int, tmp: Path) -> Figure:
    fig = Figure("cold build")
    debug_args = ["--debug", ",".join(debug)] if debug else []
    k = prepare(work, profile, debug, [])
    for i in range(repeat):
        fresh = tmp / f"cold-{i}"
        elapsed, code = timed(harness_argv("build", "--quiet", "--work", fresh, "--profile", profile, *debug_args),
                              env=NO_CCACHE)
        if code != 0:
            raise HarnessError(f"bench: cold 'iommufd-harness build' failed (exit {code})")
        fig.harness.append(elapsed)
        shutil.rmtree(fresh, ignore_errors=True)
        out = tmp / f"cold-make-{i}"
        out.mkdir()
        shutil.copyfile(k.build_dir / ".config", out / ".config")
        argv = [a if not a.startswith("O=") else f"O={out}" for a in k.make]
        timed(argv[:-1] + ["olddefconfig"], env=NO_CCACHE)
        elapsed, code = timed(argv, env=NO_CCACHE)
        if code != 0:
            raise HarnessError(f"bench: the direct cold make failed (exit {code})")
        fig.floor.append(elapsed)
        # what the guest kernel's config makes kbuild compile
        fig.extra["objects"] = sum(1 for _ in out.rglob("*.o"))
        shutil.rmtree(out, ignore_errors=True)
    return fig
