"""Mutation testing of the core modules with mutmut (pinned in requirements.lock).

    .venv/bin/python scripts/mutants.py                  # every module, fresh
    .venv/bin/python scripts/mutants.py leak shards      # some modules
    .venv/bin/python scripts/mutants.py --keep           # reuse the previous results (mutmut's
                                                         # cache: only changed functions rerun)
    .venv/bin/python scripts/mutants.py --survivors leak # list the surviving mutants, with diffs
    .venv/bin/python scripts/mutants.py --recheck vectors
                                                         # rerun only the last run's survivors
                                                         # against the current tests (after new
                                                         # tests; the source must be unchanged)

Each module is mutated on its own, in ``build/mutants/<module>/`` (a copy of ``src/`` and
``tests/``; nothing in the repository's ``src/`` is ever modified), and each mutant runs only the
tests, among the module's test files below, that call the mutated function (mutmut records
which tests call which function in a first clean run). Tests marked ``slow`` are left out.
Prints one table: module | mutants | killed | survived | timeout | no tests | killed %, where
killed % = (killed + timeout) / mutants (a mutant that makes the tests hang is detected), and
writes it to ``build/mutants/summary.md``. ``docs/mutation.md`` lists the surviving mutants
judged equivalent, with the reason.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "mutants"
PKG = "src/emotion_vectors"

# module -> (file to mutate, test files that exercise it)
MODULES: dict[str, tuple[str, list[str]]] = {
    "leak": (f"{PKG}/corpus/leak.py", ["tests/test_leak.py", "tests/test_leak_rules.py"]),
    "parsing": (f"{PKG}/corpus/parsing.py", ["tests/test_parsing.py"]),
    "analysis/geometry": (f"{PKG}/analysis/geometry.py", ["tests/test_analysis_geometry.py"]),
    "analysis/stats": (f"{PKG}/analysis/stats.py", ["tests/test_analysis_stats.py"]),
    # Holm and BH (once in analysis/stats), the Wilson interval and the stratified subsample.
    "core/stats": (f"{PKG}/core/stats.py", ["tests/test_analysis_stats.py", "tests/test_diagnostics.py"]),
    "vectors": (f"{PKG}/vectors/build.py", ["tests/test_vectors.py"]),
    "extract": (f"{PKG}/extraction/extract.py", ["tests/test_extract.py", "tests/test_extract_rules.py"]),
    "shards": (f"{PKG}/extraction/shards.py", ["tests/test_shards.py", "tests/test_shards_steps.py", "tests/test_faults.py"]),
}
# Tests left out of a module's runs because they cost most and check nothing the module's other
# tests do not: the real default model's copy of the tiny models' pooling check (extract), and
# the SIGKILL-in-a-subprocess resume (shards; test_faults resumes interrupted partials in-process).
DESELECT: dict[str, list[str]] = {
    "extract": ["tests/test_extract.py::test_default_model_equals_reference"],
    "shards": ["tests/test_shards.py::test_hard_kill_then_resume_equals_uninterrupted"],
}
# Read by the tests through REPO_ROOT (config lists, the config schema); copied into the work dir.
ALSO_COPY = ["config", "workflow"]
# A pytest plugin loaded in every run (``-p _mutants_plugin``): it empties the package's
# ``functools`` caches before each test. mutmut learns which tests reach a function by running
# the clean suite once; a test served from a cache filled by an earlier test never reaches the
# cached function, so it would not be run against that function's mutants. The tests pass either
# way; this only makes the mapping test -> function complete.
PLUGIN = """\
import sys


def pytest_runtest_setup(item):
    for name, module in list(sys.modules.items()):
        if name.startswith("emotion_vectors") and module is not None:
            for value in list(vars(module).values()):
                clear = getattr(value, "cache_clear", None)
                if callable(clear) and getattr(value, "__module__", None) == name:
                    clear()
"""
STATUS = {1: "killed", 3: "killed", 0: "survived", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 5: "no tests", 33: "no tests", None: "not checked"}


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(module: str, keep: bool) -> Path:
    """The work dir of ``module``: src/, tests/ and the config files copied, a pyproject.toml
    with the pytest settings and this module's mutmut settings."""
    target, tests = MODULES[module]
    work = BUILD / module.replace("/", "-")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    for name in ("src", "tests", *ALSO_COPY):
        # copy2 keeps the mtimes, which mutmut compares to know what changed (--keep)
        shutil.copytree(REPO / name, work / name, ignore=ignore, dirs_exist_ok=True, copy_function=shutil.copy2)
    pytest_ini = _pytest_section()
    pytest_args = ["-m", "not slow", "-p", "no:cacheprovider", "-p", "_mutants_plugin", "-W", "ignore::DeprecationWarning"]
    for test in DESELECT.get(module, []):
        pytest_args += ["--deselect", test]
    (work / "pyproject.toml").write_text(
        f"{pytest_ini}\n"
        "[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f"only_mutate = {_toml_list([target])}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        f"pytest_add_cli_args = {_toml_list(pytest_args)}\n"
        f"also_copy = {_toml_list(ALSO_COPY)}\n"
        # The tests need no git; the work dir is not a repository.
        "use_git_change_detection = false\n"
        # Each mutant runs in a process forked from a server that has imported the tests but run
        # none: no state of the clean run leaks into it (lru caches filled by the originals would
        # hide mutants of the functions they cache), and torch's thread pool is never forked.
        'process_isolation = "forkserver"\n'
    )
    # The default model (prepared once in the repository) is linked, never copied (500 MB).
    models = work / "mutants" / "results" / "models"
    models.parent.mkdir(parents=True, exist_ok=True)
    if not models.exists():
        models.symlink_to(REPO / "results" / "models", target_is_directory=True)
    # Must exist before mutmut starts: PYTHONPATH names it (run_module), and Python caches a
    # missing path entry as "nothing to import here" for the whole run.
    (work / "mutants" / "src").mkdir(exist_ok=True)
    (work / "mutants" / "src" / "_mutants_plugin.py").write_text(PLUGIN)
    return work


def _pytest_section() -> str:
    """The repository's ``[tool.pytest.ini_options]`` table, verbatim (markers)."""
    text = (REPO / "pyproject.toml").read_text()
    start = text.index("[tool.pytest.ini_options]")
    end = text.find("\n[", start + 1)
    return text[start : end if end != -1 else len(text)].rstrip() + "\n"


def ensure_default_model() -> None:
    """The tests' tokenizer is the default model's: prepare it in results/models if missing."""
    code = "import sys; sys.path.insert(0, 'tests'); from conftest import _ensure_default_model; _ensure_default_model()"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def run_module(module: str, work: Path, children: int, mutants: list[str] | None = None) -> float:
    env = dict(os.environ)
    # Subprocesses started by tests import the mutated package too (the trampoline reads
    # MUTANT_UNDER_TEST from the environment), not the editable install's src/.
    env["PYTHONPATH"] = str(work / "mutants" / "src") + os.pathsep + env.get("PYTHONPATH", "")
    # One thread per process: torch's OpenMP pool is not fork-safe, and the machine is shared.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    mutmut = Path(sys.executable).with_name("mutmut")
    started = time.monotonic()
    log = work / "mutmut.log"
    with open(log, "w") as fh:
        proc = subprocess.run([str(mutmut), "run", "--max-children", str(children), *(mutants or [])], cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"mutmut failed on {module} (exit {proc.returncode}); see {log}:\n{tail}")
    return seconds


def results(module: str, work: Path) -> dict[str, str]:
    target, _ = MODULES[module]
    meta = work / "mutants" / (target + ".meta")
    data = json.loads(meta.read_text())
    return {k: STATUS.get(v, "suspicious") for k, v in data["exit_code_by_key"].items()}


def row(module: str, status: dict[str, str], seconds: float | None) -> dict:
    counts = {s: sum(1 for v in status.values() if v == s) for s in ("killed", "survived", "timeout", "no tests", "suspicious", "not checked")}
    n = len(status)
    share = 100.0 * (counts["killed"] + counts["timeout"]) / n if n else float("nan")
    return {"module": module, "mutants": n, **counts, "killed_pct": share, "seconds": seconds}


def table(rows: list[dict]) -> str:
    head = "| module | mutants | killed | survived | timeout | no tests | killed % | time |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    lines = []
    for r in rows:
        t = f"{r['seconds'] / 60:.1f} min" if r["seconds"] is not None else "cached"
        if r.get("rechecked") is not None:
            t += f" (+ {r['rechecked']} survivors rechecked)"
        lines.append(
            f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['survived']} | {r['timeout']} | "
            f"{r['no tests']} | {r['killed_pct']:.1f} | {t} |"
        )
    return head + "\n".join(lines) + "\n"


def write_summary() -> None:
    """``build/mutants/summary.md``: the last measured row of every module that has one (a run of
    some modules keeps the others' rows), with how many mutants ran at once for each."""
    rows = []
    for m in MODULES:
        f = BUILD / m.replace("/", "-") / "row.json"
        if f.exists():
            rows.append(json.loads(f.read_text()))
    jobs = sorted({r.get("jobs", 0) for r in rows})
    (BUILD / "summary.md").write_text(table(rows) + f"\nmutants run at once: {', '.join(map(str, jobs))}\n")


def show_survivors(module: str, work: Path) -> None:
    """Print each surviving (or untested) mutant of ``module`` as a diff against the original
    function, read from the mutated file (what ``mutmut show`` prints, without a process each)."""
    target, _ = MODULES[module]
    source = (work / "mutants" / target).read_text()
    lines = source.splitlines()
    functions = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name:
            functions[node.name] = "\n".join(lines[node.lineno - 1 : node.end_lineno])
    for key, status in sorted(results(module, work).items(), key=lambda kv: _natural(kv[0])):
        if status not in ("survived", "no tests", "suspicious"):
            continue
        name = key.rpartition(".")[2]
        orig = functions.get(name.rpartition("__mutmut_")[0] + "__mutmut_orig", "")
        mutant = functions.get(name, "")
        diff = difflib.unified_diff(orig.splitlines(), mutant.splitlines(), lineterm="", n=1)
        body = "\n".join(line for line in list(diff)[2:] if not line.startswith("@@"))
        print(f"## {status}: {key}\n{body}\n")


def _natural(key: str) -> tuple:
    head, _, num = key.rpartition("__mutmut_")
    return (head, int(num) if num.isdigit() else 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"default: all ({', '.join(MODULES)})")
    parser.add_argument("--keep", action="store_true", help="reuse build/mutants/ (mutmut reruns only changed functions)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="mutants run at once (default 2)")
    parser.add_argument("--survivors", action="store_true", help="print the surviving mutants of the modules' last run")
    parser.add_argument("--recheck", action="store_true",
                        help="rerun only the last run's surviving mutants against the current tests (the module's source "
                             "must be unchanged since that run: a changed source needs a full run)")
    parser.add_argument("--min", type=float, default=80.0, help="exit 1 if a module's killed %% is below this (default 80)")
    args = parser.parse_args(argv)
    modules = args.modules or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
    if args.survivors:
        for m in modules:
            show_survivors(m, BUILD / m.replace("/", "-"))
        return 0
    ensure_default_model()
    BUILD.mkdir(parents=True, exist_ok=True)
    rows = []
    total_start = time.monotonic()
    for m in modules:
        print(f"[mutants] {m}: mutating {MODULES[m][0]} against {' '.join(MODULES[m][1])}"
              + (f" less {' '.join(DESELECT[m])}" if m in DESELECT else ""), flush=True)
        work = BUILD / m.replace("/", "-")
        survivors = None
        if args.recheck:
            target = MODULES[m][0]
            if not (work / "mutants" / target).exists():
                parser.error(f"--recheck {m}: no earlier run in {work}")
            if (work / target).read_bytes() != (REPO / target).read_bytes():
                parser.error(f"--recheck {m}: {target} changed since the last run; run it in full")
            survivors = [k for k, v in results(m, work).items() if v in ("survived", "no tests", "suspicious")]
            print(f"[mutants] {m}: rechecking {len(survivors)} survivors of the last run", flush=True)
        previous = json.loads((work / "row.json").read_text()) if args.recheck and (work / "row.json").exists() else {}
        work = prepare(m, args.keep or args.recheck)
        seconds = run_module(m, work, args.jobs, survivors) if survivors != [] else 0.0
        rows.append(row(m, results(m, work), previous.get("seconds") if args.recheck else seconds))
        if args.recheck:
            rows[-1]["rechecked"] = len(survivors)
        r = rows[-1]
        print(f"[mutants] {m}: {r['mutants']} mutants, {r['killed_pct']:.1f}% killed, {seconds / 60:.1f} min", flush=True)
        # written after every module, so that an interrupted run keeps what it measured
        (work / "row.json").write_text(json.dumps({**r, "jobs": args.jobs}) + "\n")
        write_summary()
    text = table(rows)
    total = time.monotonic() - total_start
    print()
    print(text)
    print(f"wall time {total / 60:.1f} min ({args.jobs} mutants at once); surviving mutants: "
          f"{sys.executable} scripts/mutants.py --survivors <module>")
    low = [r["module"] for r in rows if not r["killed_pct"] >= args.min]
    if low:
        print(f"below {args.min:.0f}% killed: {', '.join(low)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
