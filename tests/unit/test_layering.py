"""The package's shape (docs/architecture.md): imports between raykd modules point one way (no circles;
between packages only down the layers), the pure core imports no Ray (not even inside a function), no
family name is compared outside ``models/families/``, a submodule never imports its own package's
``__init__``, and no function in ``raykd/``, ``benchmarks/`` or ``scripts/`` runs over 100 lines. The tests'
own shape too: test modules never import each other, every test asserts, every test is in a tier.
Read from the source with ``ast``, so it needs nothing imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
PKG = Path(__file__).resolve().parents[2] / "raykd"
RAY_LAYER = "raykd.ray_layer"
ROOT = PKG.parent
ENTRY_SHIMS = {"raykd.tune", "raykd.cache"}  # `python -m` entry points that only forward to the Ray layer
RESULT_SHIMS = {"raykd.report", "raykd.export"}  # `python -m raykd.report|export`: forward to raykd.results
# the layers, bottom (0) to top: a module imports only modules of its own package, of a lower layer, or what
# SIDEWAYS allows; the foundation is the package's loose modules
LAYERS = {"foundation": 0, "config": 1, "data": 2, "models": 2, "metrics": 3, "distill": 4, "evaluation": 5,
          "train": 5, "stages": 6, "results": 6, "ray_layer": 7, "entry": 8}
FOUNDATION = {"raykd.errors", "raykd.registry", "raykd.atomic", "raykd._version"}
ENTRY = {"raykd", "raykd.__main__"} | ENTRY_SHIMS | RESULT_SHIMS
# named exceptions to "down only", each with its reason
UPWARD = {("config", "raykd.distill.settings"):
          "each method's settings are declared beside it (pure: they import only the registry); config reads them",
          ("config", "raykd.models.families.spec"):
          "each family's declaration (pure: no torch) lives with the family; config validates a teacher against it"}
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
    for shim in ENTRY_SHIMS | RESULT_SHIMS:
        internal = {i for i in imports(shim, mods[shim]) if i.startswith("raykd")}
        home = RAY_LAYER if shim in ENTRY_SHIMS else "raykd.results"
        assert internal and all(i.startswith(home) for i in internal), (shim, internal)
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


def layer_of(module: str) -> str:
    """The layer a raykd module belongs to (its package under raykd/, the foundation, or the entry points)."""
    if module in ENTRY:
        return "entry"
    if module in FOUNDATION:
        return "foundation"
    return module.split(".")[1]


def test_every_module_has_a_layer():
    unknown = sorted(m for m in modules() if layer_of(m) not in LAYERS)
    assert not unknown, f"modules outside the layers (add their package to LAYERS): {unknown}"


def test_imports_between_packages_point_down_the_layers():
    graph, wrong = internal_graph(modules()), []
    for m, deps in graph.items():
        a = layer_of(m)
        for d in deps:
            b = layer_of(d)
            if a == b or LAYERS[a] > LAYERS[b] or (a, d) in UPWARD:
                continue
            wrong.append(f"{m} ({a}) → {d} ({b})")
    assert not wrong, "imports that do not point down the layers:\n" + "\n".join(sorted(wrong))
    # the rule can fail: data and models share a layer and so may not import each other
    assert LAYERS["data"] == LAYERS["models"] and not LAYERS["data"] > LAYERS["models"]


def test_a_submodule_never_imports_its_own_packages_init():
    mods, wrong = modules(), []
    packages = {m for m in mods if (PKG.parent / Path(*m.split(".")) / "__init__.py").exists()}
    for m, tree in mods.items():
        for pkg in packages:
            if m != pkg and m.startswith(pkg + ".") and pkg in imports(m, tree):
                wrong.append(f"{m} imports {pkg}/__init__")
    assert not wrong, wrong


FAMILY_TEST = re.compile(r"""(==|!=|\bin)\s*[\(\[\{]?\s*['"](masked_lm|causal_lm|seq2seq_lm)['"]|"""
                         r"""['"](masked_lm|causal_lm|seq2seq_lm)['"]\s*:""")


def family_branches(lines: list[str]) -> list[int]:
    """Line numbers (1-based) that compare a family name or key a table by one."""
    return [i for i, line in enumerate(lines, 1) if FAMILY_TEST.search(line)]


def test_no_family_name_is_compared_outside_the_family_modules():
    assert family_branches(['if cfg.teacher.family == "causal_lm":', 'X = {"masked_lm": 1}', 'f("causal_lm")']) == [1, 2]
    found = []
    for f in sorted(PKG.rglob("*.py")):
        if "families" in f.relative_to(PKG).parts:
            continue
        found += [f"{f.relative_to(ROOT)}:{i}" for i in family_branches(f.read_text(encoding="utf-8").splitlines())]
    assert not found, f"family names compared outside raykd/models/families/: {found}"


def long_functions(folder: Path, limit: int) -> list[str]:
    out = []
    for f in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
                out.append(f"{f.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    return out


def test_no_function_over_100_lines_in_benchmarks_and_scripts_either():
    long = long_functions(ROOT / "benchmarks", 100) + long_functions(ROOT / "scripts", 100)
    assert not long, f"functions over 100 lines: {long}"


# ------------------------------------------------------------------------------------- the tests' shape
TESTS = ROOT / "tests"
TIERS = {"unit", "integration", "distributed"}


def _test_module_trees() -> dict[Path, ast.Module]:
    return {f: ast.parse(f.read_text(encoding="utf-8")) for f in sorted(TESTS.rglob("test_*.py"))}


def test_test_modules_never_import_each_other():
    wrong = []
    for f, tree in _test_module_trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests.") \
                    and not node.module.startswith(("tests.helpers", "tests.conftest")):
                wrong.append(f"{f.relative_to(ROOT)}: from {node.module}")
            elif isinstance(node, ast.ImportFrom) and node.level and (node.module or "").startswith("test_"):
                wrong.append(f"{f.relative_to(ROOT)}: from .{node.module}")
    assert not wrong, f"shared helpers belong in tests/helpers/ or conftest: {wrong}"


def _asserts(fn: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(fn)) or any(
        isinstance(n, ast.Attribute) and n.attr in ("raises", "fail", "warns") for n in ast.walk(fn))


def test_every_test_asserts_and_is_in_a_tier():
    assert not _asserts(ast.parse("def test_x():\n    f()\n").body[0])  # the check can fail
    silent, untiered = [], []
    for f, tree in _test_module_trees().items():
        marks = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                 and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"}
        if not marks & TIERS:
            untiered.append(str(f.relative_to(ROOT)))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_") \
                    and not _asserts(node):
                silent.append(f"{f.relative_to(ROOT)}:{node.name}")
    assert not silent, f"tests without an assertion: {silent}"
    assert not untiered, f"test modules in no tier (never run by scripts/test.sh): {untiered}"
