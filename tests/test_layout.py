"""The layout's promises, checked: dependencies point one way, no import circles, no side effects at import.

The package map (docs/architecture.md): interfaces (CLI, HTTP, UI, webhooks, dev, demo) → client / node /
activities → engine (deterministic, no I/O) → eventstore; ``projections`` knows events, not actors. A test
and not a convention, because an import in the wrong direction is one line and reads as harmless.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "eventstore", "projections")

#: layer -> the layers it must not import (at module level or inside a function).
FORBIDDEN = {
    "eventstore": ("actors", "projections"),
    "projections": ("actors",),
    "actors.engine": ("actors.node", "actors.client", "actors.activities", "actors.interfaces", "projections"),
    "actors.node": ("actors.interfaces",),
    "actors.client": ("actors.interfaces", "actors.node"),
    "actors.activities": ("actors.interfaces", "actors.node", "actors.client"),
    "actors.workflow": ("actors.engine.replay", "actors.node", "actors.client", "actors.interfaces"),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Absolute module names imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:
            continue  # `if TYPE_CHECKING:` blocks import for annotations only
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def test_dependencies_point_one_way() -> None:
    sources = _sources()
    wrong = []
    for name, path in sources.items():
        for layer, banned in FORBIDDEN.items():
            if name == layer or name.startswith(layer + "."):
                for imported in _imports(path, top_level_only=False):
                    if any(imported == b or imported.startswith(b + ".") for b in banned):
                        wrong.append(f"{name} imports {imported}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_circles_between_modules() -> None:
    sources = _sources()
    graph = {
        name: {m for m in _imports(path, top_level_only=True) if m in sources and m != name}
        for name, path in sources.items()
    }
    # a package's __init__ importing its own submodules is not a circle of ideas
    for name in graph:
        graph[name] = {m for m in graph[name] if not (m.startswith(name + ".") and (ROOT / name.replace(".", "/")).is_dir())}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_importing_actors_changes_nothing_in_the_process() -> None:
    """asyncio is mapped by the runtime when it drives workflow code, not by ``import actors``."""
    code = (
        "import asyncio, threading\n"
        "before = (asyncio.gather, asyncio.sleep, asyncio.wait, asyncio.wait_for, threading.stack_size())\n"
        "import actors, actors.workflow, actors.testing\n"
        "after = (asyncio.gather, asyncio.sleep, asyncio.wait, asyncio.wait_for, threading.stack_size())\n"
        "assert before == after, (before, after)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_asyncio_calls_in_workflow_code_are_mapped_once_a_run_exists() -> None:
    """The other half of the promise above: a workflow that sleeps with asyncio.sleep still gets a durable timer."""
    code = (
        "import asyncio\n"
        "from actors import Workflow\n"
        "from actors.testing import WorkflowEnvironment\n"
        "class Sleeper(Workflow):\n"
        "    async def execute(self):\n"
        "        await asyncio.sleep(3600)\n"
        "        return 'woke'\n"
        "env = WorkflowEnvironment()\n"
        "h = env.start(Sleeper)\n"
        "print(env.result(h))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "woke" in proc.stdout
