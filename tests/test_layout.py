"""The package's layout: one subpackage per stage of the workflow, imports only downwards.

Stages, lowest first: ``core`` < ``corpus`` < ``extraction`` < ``vectors`` < ``analysis`` <
``steering`` < ``reading``. A module of a stage imports only from its own stage and from lower
ones; the top-level modules that gather every stage (``findings``, ``faults``, ``bench``) may
import anything, and nothing in a stage imports them. No two modules import each other, directly
or through others. Every ``import`` counts, the ones inside functions too (read with ``ast``,
nothing is imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "emotion_vectors"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / PACKAGE
STAGES = ("core", "corpus", "extraction", "vectors", "analysis", "steering", "reading")
#: Top-level modules and packages that gather every stage; nothing in a stage may import them.
GATHERERS = ("findings", "faults", "bench")


def modules(package_dir: Path = PACKAGE_DIR) -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, is a package's ``__init__``)."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def imports(package_dir: Path = PACKAGE_DIR) -> dict[str, list[tuple[str, int, str]]]:
    """Each module's imports of the package: module -> [(imported module, line, statement)].

    ``from a.b import c`` imports the module ``a.b.c`` when there is one, else ``a.b``;
    relative imports are resolved against the importing module's package. A module that does
    not exist is listed as written (``unresolved_problems``).
    """
    mods = modules(package_dir)
    out: dict[str, list[tuple[str, int, str]]] = {}
    for name, (path, is_package) in mods.items():
        found: list[tuple[str, int, str]] = []
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source, str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]
            for target in targets:
                if target != PACKAGE and not target.startswith(PACKAGE + "."):
                    continue
                statement = " ".join((ast.get_source_segment(source, node) or "").split())
                entry = (target, node.lineno, statement if len(statement) <= 120 else statement[:117] + "...")
                if target != name and entry not in found:
                    found.append(entry)
        out[name] = found
    return out


def stage_of(module: str) -> str | None:
    """The stage (or gathering module) a module belongs to; None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycle_problems(package_dir: Path = PACKAGE_DIR) -> list[str]:
    edges = imports(package_dir)
    graph = {m: {t for t, _, _ in found} for m, found in edges.items()}
    problems = []
    for component in cycles(graph):
        inside = set(component)
        lines = [f"  {m}:{line}: {stmt}" for m in component for t, line, stmt in edges[m] if t in inside]
        problems.append("import cycle between " + ", ".join(component) + ":\n" + "\n".join(lines))
    return problems


def layering_problems(package_dir: Path = PACKAGE_DIR) -> list[str]:
    rank = {s: i for i, s in enumerate(STAGES)}
    problems = []
    for module, found in imports(package_dir).items():
        stage = stage_of(module)
        if stage not in rank:
            continue
        for target, line, stmt in found:
            theirs = stage_of(target)
            if theirs is None:  # the package itself (its version)
                continue
            if theirs in GATHERERS:
                problems.append(f"{module}:{line} imports the top-level {target} ({stmt})")
            elif theirs not in rank:
                problems.append(f"{module}:{line} imports {target}, which belongs to no stage ({stmt})")
            elif rank[theirs] > rank[stage]:
                problems.append(f"{module}:{line} ({stage}) imports {target} of the higher stage {theirs} "
                                f"({stmt})")
    return problems


def placement_problems(package_dir: Path = PACKAGE_DIR) -> list[str]:
    problems = []
    for module in modules(package_dir):
        stage = stage_of(module)
        if stage is not None and stage not in STAGES and stage not in GATHERERS:
            problems.append(f"{module} lies outside the stages {STAGES} and is none of {GATHERERS}")
    return problems


def unresolved_problems(package_dir: Path = PACKAGE_DIR) -> list[str]:
    mods = modules(package_dir)
    return [f"{m}:{line} imports {t}, which does not exist ({stmt})"
            for m, found in imports(package_dir).items() for t, line, stmt in found if t not in mods]


def test_no_import_cycle():
    problems = cycle_problems()
    assert not problems, "\n".join(problems)


def test_stages_import_only_downwards():
    problems = layering_problems()
    assert not problems, "\n".join(problems)


def test_every_module_has_a_stage():
    problems = placement_problems()
    assert not problems, "\n".join(problems)


def test_imports_resolve():
    problems = unresolved_problems()
    assert not problems, "\n".join(problems)


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A package in the old flat style with one cycle (a <-> b, one import inside a function) and
    a stage that imports upwards and one that imports a gatherer."""
    pkg = tmp_path / PACKAGE
    files = {
        "__init__.py": "__version__ = '0'\n",
        "a.py": "from .b import f\n",
        "b.py": "def f():\n    from emotion_vectors.a import g\n",
        "core/__init__.py": "",
        "core/config.py": "from .. import __version__\n",
        "corpus/__init__.py": "",
        "corpus/generate.py": "def g():\n    from ..steering import steer\n",
        "steering/__init__.py": "",
        "steering/steer.py": "from emotion_vectors.core.config import x\nfrom emotion_vectors import findings\n",
        "findings.py": "from .core.config import x\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def test_the_checks_find_cycles_and_upward_imports(toy: Path):
    found = cycle_problems(toy)
    assert len(found) == 1 and "emotion_vectors.a, emotion_vectors.b" in found[0]
    assert "emotion_vectors.b:2: from emotion_vectors.a import g" in found[0]
    layering = layering_problems(toy)
    assert any("emotion_vectors.corpus.generate:2 (corpus) imports emotion_vectors.steering.steer of the higher "
               "stage steering" in p for p in layering)
    assert any("emotion_vectors.steering.steer:2 imports the top-level emotion_vectors.findings" in p for p in layering)
    assert len(layering) == 2  # core.config's import of the package's version and findings' import are fine
    assert placement_problems(toy) == [f"{PACKAGE}.{m} lies outside the stages {STAGES} and is none of {GATHERERS}"
                                       for m in ("a", "b")]


#: The longest unit (function, method or class) the package keeps without a written reason.
MAX_UNIT_LINES = 120
REASON = "# Over 120 lines:"


def long_unit_problems(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Every def or class longer than ``MAX_UNIT_LINES`` with no ``# Over 120 lines: <why>`` comment
    on the line above it (or above its decorators)."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source, str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            n = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            above = lines[first - 2].strip() if first >= 2 else ""
            if n > MAX_UNIT_LINES and not (above.startswith(REASON) and len(above) > len(REASON) + 3):
                found.append(f"{path.relative_to(package_dir.parent)}:{node.lineno} {node.name}: {n} lines "
                             f"(split it by concern, or write '{REASON} <why>' above it)")
    return found


def test_no_unit_over_120_lines_without_a_reason():
    problems = long_unit_problems()
    assert not problems, "\n".join(problems)


def test_the_long_unit_check_finds_a_long_function_and_accepts_a_reason(tmp_path: Path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_UNIT_LINES))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\n\n{REASON} one table of cases\n@staticmethod\n"
                                   f"def kept():\n{body}\n\ndef short():\n    return 1\n")
    found = long_unit_problems(tmp_path)
    assert len(found) == 1 and "m.py:1 long: 121 lines" in found[0], found
