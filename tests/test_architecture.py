"""The architecture, checked: imports point one way (import-linter's contracts in pyproject.toml),
no module imports itself back through others, functions and files stay readable in one sitting,
and the light commands start without torch."""
from __future__ import annotations

import ast
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("benchmark", "jobs", "methods", "flowar", "var_baseline", "flexvar")
MAX_FUNCTION_LINES, MAX_FILE_LINES = 45, 400


def test_layer_contracts_hold():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    out = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of size > 1 (the import circles)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_level_import_circles():
    """Imports inside functions count: grimp sees them all."""
    import grimp
    graph = grimp.build_graph(*PACKAGES)
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in graph.modules} for m in graph.modules}
    # A package's __init__ importing its own submodules is not a circle between files.
    edges = {m: {i for i in targets if not m.startswith(i + ".")} for m, targets in edges.items()}
    assert strongly_connected(edges) == []


def source_files():
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_functions_and_files_are_short():
    long_functions, long_files = [], []
    for path in source_files():
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert long_files == [] and long_functions == []


def no_torch(code: str) -> subprocess.CompletedProcess:
    probe = f"import sys\n{code}\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    return subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)


def test_help_list_and_status_start_without_torch(tmp_path):
    out = no_torch("from benchmark.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert out.returncode == 0 and "python -m benchmark" in out.stdout, out.stderr
    out = no_torch("from benchmark.cli import main\nassert main(['list']) == 0")
    assert out.returncode == 0 and "methods: flexvar, flowar, var" in out.stdout, out.stderr
    sweep = tmp_path / "sweeps" / "s1"
    sweep.mkdir(parents=True)
    result = sweep / "0_result.pkl"
    result.write_bytes(pickle.dumps(("success", ["records/a.json"])))
    job = {"name": "tiny/var/seed0/evaluate", "job_id": "1", "stdout": "", "stderr": "", "result": str(result)}
    (sweep / "sweep.json").write_text(json.dumps({"executor": "local", "groups": [{"name": "evaluate", "jobs": [job]}]}))
    out = no_torch(f"from benchmark.cli import main\nassert main(['status', '{sweep}']) == 0")
    assert out.returncode == 0 and "COMPLETED" in out.stdout, out.stderr


def test_the_api_is_importable_from_the_package():
    import benchmark
    assert callable(benchmark.run) and callable(benchmark.evaluate) and callable(benchmark.collect)
    with pytest.raises(AttributeError):
        benchmark.nothing_here


def test_every_harness_module_is_in_a_layer():
    """A module the contracts do not name would escape them."""
    import tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    named = {m.strip() for layer in config["layers"] for m in layer.replace("|", ":").split(":")}
    modules = {f"benchmark.{p.stem if p.name != '__init__.py' else p.parent.name}"
               for p in (ROOT / "benchmark").glob("*/__init__.py")} | \
              {f"benchmark.{p.stem}" for p in (ROOT / "benchmark").glob("*.py") if p.stem != "__init__"}
    assert modules - named == set()
