"""The house rules of docs/architecture.md, read from the code: imports
point one way and never in a circle (lazy imports inside functions
included; ``if TYPE_CHECKING:`` blocks are not imports)."""

from __future__ import annotations

import ast
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent / "harness"
# the spine and the lab: what the packages below never import
ABOVE = ("harness.cli", "harness.commands", "harness.jobs", "harness.pipeline", "harness.walk", "harness.bench", "harness.nightly",
         "harness.lab", "harness.mail")
BELOW = ("harness.stages", "harness.targets", "harness.run", "harness.parse", "harness.reports", "harness.kconfig")


def _modules() -> dict[str, Path]:
    out = {}
    for f in HARNESS.rglob("*.py"):
        parts = f.relative_to(HARNESS.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
            for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in mods}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full in mods else node.module)
    return {m for m in out if m in mods}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(f, mods) - {m} for m, f in mods.items()}


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_module_imports_itself_back_through_others():
    graph = _graph()
    cycles = []
    for start in graph:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join(path + [start]))
                elif nxt not in path and len(path) < 8:
                    stack.append((nxt, path + [nxt]))
    assert not cycles, "\n".join(sorted(set(cycles))[:10])


def test_the_stages_targets_runner_parsers_and_reports_never_import_the_spine_or_the_lab():
    graph = _graph()
    wrong = sorted(f"{m} imports {i}" for m, deps in graph.items() if _under(m, BELOW)
                   for i in deps if _under(i, ABOVE))
    assert not wrong, "\n".join(wrong)


def test_the_parsers_import_nothing_but_each_other_and_the_errors():
    graph = _graph()
    wrong = sorted(f"{m} imports {i}" for m, deps in graph.items() if _under(m, ("harness.parse",))
                   for i in deps if not _under(i, ("harness.parse", "harness.errors")))
    assert not wrong, "\n".join(wrong)


def test_the_runner_knows_targets_by_their_interfaces_and_targets_do_not_know_the_runner():
    """run/ may import the Target protocol and the Lifecycle, never a kind
    of target (a VM, QEMU, a board, its deploy); targets/ never import run/."""
    graph = _graph()
    interfaces = ("harness.targets.base", "harness.targets.lifecycle")
    wrong = sorted(f"{m} imports {i}" for m, deps in graph.items() for i in deps
                   if (_under(m, ("harness.targets",)) and _under(i, ("harness.run",)))
                   or (_under(m, ("harness.run",)) and _under(i, ("harness.targets",)) and i not in interfaces))
    assert not wrong, "\n".join(wrong)


def test_the_pipeline_reaches_the_lab_only_through_its_place_and_only_cli_imports_the_commands():
    """The pipeline asks for a target and does not know what a board is:
    of the lab it imports harness.lab.place alone; the subcommands sit on
    top of everything (only the command line imports them), and nothing
    outside the lab imports the lab's insides but the commands."""
    graph = _graph()
    wrong = sorted(f"{m} imports {i}" for m, deps in graph.items() for i in deps
                   if (m == "harness.pipeline" and _under(i, ("harness.lab",)) and i != "harness.lab.place")
                   or (_under(i, ("harness.commands",)) and not _under(m, ("harness.cli", "harness.commands"))))
    assert not wrong, "\n".join(wrong)


def test_no_module_is_over_500_lines():
    long = sorted(f"{f.relative_to(HARNESS.parent)}: {n} lines" for f in HARNESS.rglob("*.py")
                  if (n := len(f.read_text().splitlines())) > 500)
    assert not long, "\n".join(long)
