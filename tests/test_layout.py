"""The code's shape, checked: layers that import downward only, no import circle (imports inside functions
included), no function with more than 8 parameters, stage files a newcomer reads at once, and every model
family implementing the one `ModelFamily` protocol."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")
# Lower layers first; a module may import its own layer and the ones before it. The stage modules and the
# stage contract (stages/*.py) sit above the helper layers, and pipeline/ above them all.
LAYERS = ["stages.common", "stages.media", "stages.long_video", "stages.models", "stages", "pipeline"]


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports_of(path: Path, known: dict) -> dict[str, bool]:
    """{imported project module: imported inside a function}."""
    found: dict[str, bool] = {}

    def visit(node, inside):
        for child in ast.iter_child_nodes(node):
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                targets = [f"{child.module}.{a.name}" for a in child.names] + [child.module]
            for t in targets:
                while t and t not in known:
                    t = t.rpartition(".")[0]
                if t:
                    found[t] = found.get(t, True) and inside
            visit(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text()), False)
    return found


def layer(name: str) -> int:
    return max(i for i, prefix in enumerate(LAYERS) if name == prefix or name.startswith(prefix + "."))


GRAPH = {name: imports_of(path, modules()) for name, path in modules().items()}


def test_no_import_circle_even_through_imports_inside_functions():
    state: dict[str, int] = {}

    def walk(name, trail):
        state[name] = 1
        for dep in GRAPH[name]:
            if dep == name or dep.startswith(name + ".") and name.count(".") < dep.count("."):
                continue  # a package importing its own modules (its __init__ re-exports them)
            if state.get(dep) == 1:
                cycle = trail[trail.index(dep):] + [dep] if dep in trail else [name, dep]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if dep not in state:
                walk(dep, trail + [dep])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            walk(name, [name])


def test_layers_import_downward_only():
    upward = [f"{name} imports {dep}" for name, deps in GRAPH.items() for dep in deps
              if layer(dep) > layer(name)]
    assert not upward, "\n".join(upward)


def test_stages_know_nothing_of_ray_or_the_driver():
    bad = []
    for name, path in modules().items():
        if not name.startswith("stages"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{name} imports {m}" for m in mods if m.split(".")[0] in ("ray", "pipeline")]
    assert not bad, "\n".join(bad)


def test_no_function_takes_more_than_8_parameters():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                a = node.args
                params = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)] + \
                    [p.arg for p in (a.vararg, a.kwarg) if p is not None]
                params = [p for p in params if p not in ("self", "cls")]
                if len(params) > 8:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {getattr(node, 'name', 'lambda')} "
                                f"takes {len(params)}")
    assert not long, "\n".join(long)


def test_stage_files_stay_short():
    from pipeline.spec import STAGES

    for cls in STAGES:
        path = Path(inspect.getsourcefile(cls))
        assert len(path.read_text().splitlines()) <= 280, f"{path.relative_to(ROOT)} is over 280 lines"


def test_every_family_implements_the_protocol():
    from stages.models.families import FAMILIES
    from stages.models.protocol import ModelFamily

    members = [m for m in dir(ModelFamily) if not m.startswith("_") and callable(getattr(ModelFamily, m, None))]
    for name, family in FAMILIES.items():
        assert isinstance(family, ModelFamily), name
        for m in members:
            want = list(inspect.signature(getattr(ModelFamily, m)).parameters)[1:]  # without self
            have = list(inspect.signature(getattr(family, m)).parameters)
            assert have == want, f"{name}.{m}{tuple(have)} differs from the protocol's {tuple(want)}"
