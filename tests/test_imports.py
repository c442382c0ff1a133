"""The package's shape. Imports in one direction: no import cycle, counting the imports
inside functions (a lazy import is still a dependency), and the core never imports the PyTorch
side (``timesim.pytorch``, ``timesim.accuracy``) or the examples (STYLE.md: the PyTorch
integration is one module the core never imports). No function over 150 lines."""

import ast
from pathlib import Path

import timesim

OUTER = ("timesim.pytorch", "timesim.accuracy", "timesim.examples")


def modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        init = parts[-1] == "__init__"
        out[".".join(parts[:-1] if init else parts)] = (path, init)
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its code (module level and inside
    functions; absolute and relative; ``from pkg import name`` counts the submodule ``name``
    when there is one, else the module ``pkg``)."""
    mods = modules(root, package)

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, (path, init) in mods.items():
        here = name.split(".") if init else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]
                                ) if node.level else node.module or ""
                base = base.strip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            else:
                continue
            deps |= {m for t in targets if t.split(".")[0] == package and (m := known(t))}
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_cycles_through_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg.sub.b import f\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_no_import_cycle_and_the_core_never_imports_torch_or_the_examples():
    root = Path(timesim.__file__).resolve().parent.parent
    graph = import_graph(root, "timesim")
    assert "timesim.simulate" in graph and graph["timesim.faults"]
    assert cycles(graph) == []
    outer = {m for m in graph if m.startswith(OUTER)}
    assert {"timesim.pytorch", "timesim.accuracy", "timesim.examples.digits"} <= outer
    bad = {m: sorted(graph[m] & outer) for m in graph if m not in outer and graph[m] & outer}
    assert bad == {}


def test_no_function_runs_past_150_lines():
    """A function that long holds steps that can be named (STYLE.md: a room you can name)."""
    root = Path(timesim.__file__).resolve().parent
    long = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 150:
                    long.append(f"{path.relative_to(root)}:{node.name} ({lines} lines)")
    assert long == []
