"""The house rules of the code base, checked on the source: imports point one way and never in a circle, and no
file edits ``sys.path``.

Layers (lower ones never import higher ones)::

    0 base         dendritic.provenance
    1 kernels      dendritic.kernels.*                      (own the block-mask layout)
    2 model        dendritic.{config, scoring, gating, perforation, policies, budget, masks, attention, modeling,
                   bench} and the package's __init__
    3 training     dendritic.training.*                     (phases, data, metrics, baselines)
    4 experiments  reproduce.* except the figures            (plans, runner, summaries, benches)
    figures        reproduce.figures.*, reproduce.make_figures — pure functions of result files: they import no
                   other project module (make_figures also reads reproduce.paths)
    benchmarks     benchmarks.*                              the package only

Every import is counted, also one deferred into a function (deferring an import does not remove the dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOPS = ("dendritic", "reproduce", "benchmarks")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for top in TOPS if (root / top).is_dir() for p in sorted((root / top).rglob("*.py"))}


def imports_of(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports (anywhere in the file), resolved to module names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` depends on the deepest project module named
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in TOPS:
                out.add(name)
    return out


def layer(module: str) -> str | int:
    if module == "dendritic.provenance":
        return 0
    if module.startswith("dendritic.kernels"):
        return 1
    if module.startswith("dendritic.training"):
        return 3
    if module.startswith("dendritic"):
        return 2
    if module.startswith("reproduce.figures") or module == "reproduce.make_figures":
        return "figures"
    if module.startswith("reproduce"):
        return 4
    return "benchmarks"


def allowed(src: str, dst: str) -> bool:
    a, b = layer(src), layer(dst)
    if a == "benchmarks":
        return isinstance(b, int) and b <= 3  # the package only
    if a == "figures":
        return b == "figures" or (src == "reproduce.make_figures" and dst == "reproduce.paths")
    if b in ("benchmarks", "figures"):
        return a == 4 and b == "figures"  # the experiments may call the figure makers; nobody imports benchmarks
    return b <= a


def violations(root: Path) -> tuple[list[str], list[list[str]]]:
    """(wrong-way imports, import cycles) of the project tree at ``root``."""
    known = _modules(root)
    graph = {m: imports_of(p, m, known) - {m} for m, p in known.items()}
    wrong = sorted(f"{src} -> {dst} (layer {layer(src)} -> {layer(dst)})"
                   for src, dsts in graph.items() for dst in dsts if not allowed(src, dst))
    # Cycles between modules: strongly connected components of more than one module (Tarjan).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in graph:
                continue
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
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return wrong, cycles


def test_imports_point_one_way_and_never_in_a_circle():
    wrong, cycles = violations(REPO)
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("source,kind", [
    ("from dendritic.modeling import DendriticBertModel\n", "wrong"),  # kernels must not know the model
    ("def f():\n    from ..training import data\n", "wrong"),  # deferred: still counted
    ("from reproduce.paths import REPO\n", "wrong"),
])
def test_the_check_catches_a_wrong_way_import(tmp_path, source, kind):
    """The checker itself can fail: a copy of the package with one bad import added to a kernel module."""
    for top in TOPS:
        for p in (REPO / top).rglob("*.py"):
            dest = tmp_path / p.relative_to(REPO)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
    target = tmp_path / "dendritic" / "kernels" / "reference.py"
    target.write_text(target.read_text(encoding="utf-8") + "\n" + source, encoding="utf-8")
    wrong, _ = violations(tmp_path)
    assert any(w.startswith("dendritic.kernels.reference ->") for w in wrong), wrong


def test_the_check_catches_a_cycle(tmp_path):
    for name, body in (("a", "from . import b\n"), ("b", "def f():\n    from .a import x\n")):
        (tmp_path / "reproduce").mkdir(exist_ok=True)
        (tmp_path / "reproduce" / f"{name}.py").write_text(body)
    (tmp_path / "reproduce" / "__init__.py").write_text("")
    _, cycles = violations(tmp_path)
    assert cycles == [["reproduce.a", "reproduce.b"]]


def test_no_file_edits_sys_path():
    offenders = [str(p.relative_to(REPO)) for top in (*TOPS, "tests", "scripts") for p in (REPO / top).rglob("*.py")
                 if "sys.path.insert" in p.read_text(encoding="utf-8") and p.name != "test_layers.py"]
    offenders += ["noxfile.py"] if "sys.path.insert" in (REPO / "noxfile.py").read_text() else []
    assert not offenders, f"sys.path edits in {offenders}: import the package, or run experiments with python -m"
