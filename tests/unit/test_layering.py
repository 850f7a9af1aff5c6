"""The package's shape (issue #23, DESIGN.md §2): imports between raykd modules point one way (no
circles), the pure core imports no Ray (not even inside a function), and no function runs over 100
lines. Read from the source with ``ast``, so it needs nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
PKG = Path(__file__).resolve().parents[2] / "raykd"
RAY_LAYER = "raykd.ray_layer"
ENTRY_SHIMS = {"raykd.tune", "raykd.cache"}  # `python -m` entry points that only forward to the Ray layer
API = "raykd"  # raykd/__init__.py: run_study imports the Ray layer when called


def modules() -> dict[str, ast.Module]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(f.read_text(encoding="utf-8"), str(f))
    return out


def imports(name: str, tree: ast.Module) -> set[str]:
    """Every module this one imports, anywhere in it (absolute names; relative ones resolved;
    ``from pkg import mod`` is an import of ``pkg.mod`` when that is a module, else of ``pkg``)."""
    package = name if (PKG.parent / Path(*name.split("."), "__init__.py")).exists() else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("raykd"):
                out.add(base)  # a third-party import: its name is what matters (ray, ray.tune, …)
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if is_module(sub) else base)
    return out


def is_module(dotted: str) -> bool:
    path = PKG.parent / Path(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def internal_graph(mods: dict) -> dict[str, set[str]]:
    return {m: {i for i in imports(m, t) if i in mods and i != m} for m, t in mods.items()}


def test_no_import_circles_between_raykd_modules():
    mods = modules()
    graph = internal_graph(mods)
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import circles: {cycles}"


def test_the_pure_core_imports_no_ray_and_only_the_ray_layer_does():
    mods = modules()
    offenders = {}
    for m, tree in mods.items():
        if m.startswith(RAY_LAYER) or m in ENTRY_SHIMS or m == API:
            continue
        bad = sorted(i for i in imports(m, tree) if i == "ray" or i.startswith("ray.") or i.startswith(RAY_LAYER))
        if bad:
            offenders[m] = bad
    assert not offenders, f"Ray (or the Ray layer) imported outside raykd.ray_layer: {offenders}"
    assert any(i.startswith("ray") for i in imports("raykd.ray_layer.trial", mods["raykd.ray_layer.trial"]))  # can fail


def test_the_entry_shims_only_forward_and_imports_point_down():
    mods = modules()
    for shim in ENTRY_SHIMS:
        internal = {i for i in imports(shim, mods[shim]) if i.startswith("raykd")}
        assert internal and all(i.startswith(RAY_LAYER) for i in internal), (shim, internal)
    graph = internal_graph(mods)
    for m, deps in graph.items():  # nothing below the Ray layer reaches up into it
        if not m.startswith(RAY_LAYER) and m not in ENTRY_SHIMS and m != API:
            assert not {d for d in deps if d.startswith(RAY_LAYER)}, m


def test_no_function_over_100_lines():
    long = []
    for m, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 100:
                    long.append(f"{m}.{node.name} ({n} lines)")
    assert not long, f"functions over 100 lines: {long}"
