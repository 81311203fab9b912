"""Rewrite the generated tables of ``docs/results.md`` from finished runs' outputs.

    .venv/bin/python scripts/results_doc.py [--run default] [--control negative-control]
                                            [--fresh fresh-seed] [--doc DOC ...] [--check]
                                            [--results DIR] [--only BLOCK ...]

The docs are ``docs/results.md`` and ``README.md`` unless ``--doc`` names others. Each table
sits between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->``; only
those blocks change, the measured prose around them stays. A block whose runs have not been made
is left as it is and named on stderr. ``--check`` changes nothing and exits 1 when a block would
change (the doc is stale against the runs on disk). ``--only`` rewrites the named blocks and no
other (e.g. the ``stages`` table from a fresh clone's run: ``--results ../clone/results --only
stages``).

Blocks: ``findings`` (every claim of the run beside the control's verdict), ``diagnostics`` (the
corpus diagnostics of the run, its fresh-seed corpus and the control), ``compare`` (the subjects'
comparison table), ``steering`` (steering against prompting per emotion, from
``steering/scores.tsv``; ``steering_control`` the same for the control), ``stages`` (job time per stage of the DAG, summed from ``benchmarks/``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from emotion_vectors import findings  # noqa: E402

BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)", re.S)


def findings_block(results: Path, run: str, control: str) -> str | None:
    main = results / run / "findings" / "findings.tsv"
    if not main.exists():
        return None
    ctrl = results / control / "findings" / "findings.tsv"
    table = findings.compare(findings.read_table(main), findings.read_table(ctrl) if ctrl.exists() else None)
    return findings.to_compact_markdown(table, control_name=control if ctrl.exists() else None)


def diagnostics_block(results: Path, runs: list[str]) -> str | None:
    import diagnostics_table

    present = [r for r in runs if (results / r / "diagnostics" / "summary.json").exists()]
    return diagnostics_table.table(present, results) if present else None


def compare_block(results: Path, run: str) -> str | None:
    path = results / run / "compare" / "comparison.md"
    return path.read_text() if path.exists() else None


#: Stage of the DAG of each benchmark group (the first folder under benchmarks/, or the file's stem).
STAGES = {
    "stories": "corpus: stories", "neutral": "corpus: neutral dialogues",
    "activations": "extraction (primary subject)", "subjects": "other subjects: reading, vectors, analysis",
    "vectors": "vectors", "shuffled_vectors": "vectors", "split_vectors": "vectors",
    "diagnostics": "corpus diagnostics", "analyze": "geometry", "compare": "comparison of subjects",
    "steering": "steering evidence", "behaviour": "behaviour (judge validation + scenario)",
    "scoring": "reading real text", "battery": "validation battery", "export": "export",
}


def _num(v: float, sign: bool = False) -> str:
    text = f"{v:+.2f}" if sign else f"{v:.2f}"
    return text.replace("-", "−")


def _ci(row: dict, col: str) -> str:
    return f"{_num(row[col])} [{_num(row[col + '_lo'])}, {_num(row[col + '_hi'])}]"


def steering_block(results: Path, run: str) -> str | None:
    path = results / run / "steering" / "scores.tsv"
    if not path.exists():
        return None
    t = pd.read_csv(path, sep="\t")
    lines = ["| emotion | unsteered | prompting | steering (strength; KL nats/token) | both "
             "| steering − prompting (Holm p) |", "|---|---|---|---|---|---|"]
    for emotion in dict.fromkeys(t["emotion"]):
        rows = {r["method"]: r for r in t[t["emotion"] == emotion].to_dict("records")}
        if not {"unsteered", "prompting", "steering", "both"} <= set(rows):
            continue
        st = rows["steering"]
        lines.append(
            f"| {emotion} | {_num(rows['unsteered']['score'])} | {_ci(rows['prompting'], 'score')} | "
            f"{_ci(st, 'score')} ({st['strength']:g}; {_num(st['kl'])}) | {_ci(rows['both'], 'score')} | "
            f"{_num(st['vs_prompting'], sign=True)} [{_num(st['vs_prompting_lo'])}, {_num(st['vs_prompting_hi'])}] "
            f"({st['p_vs_prompting_holm']:.2g}) |")
    return "\n".join(lines) + "\n"


def stages_block(results: Path, run: str) -> str | None:
    bench = results / run / "benchmarks"
    files = sorted(bench.rglob("*.tsv")) if bench.exists() else []
    if not files:
        return None
    groups: dict[str, list[float]] = {}
    for f in files:
        parts = f.relative_to(bench).parts
        group = parts[0] if len(parts) > 1 else f.stem
        stage = STAGES.get(group, group)
        n, s, cpu = groups.get(stage, (0, 0.0, 0.0))
        table = pd.read_csv(f, sep="\t")
        groups[stage] = (n + 1, s + float(table["s"].sum()), cpu + float(table["cpu_time"].sum()))
    lines = ["| stage | jobs | job time (s) | CPU time (s) |", "|---|---:|---:|---:|"]
    for stage, (n, s, cpu) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {stage} | {n} | {s:,.0f} | {cpu:,.0f} |")
    n_all, s_all, cpu_all = (sum(v[i] for v in groups.values()) for i in range(3))
    lines.append(f"| **all** | {n_all} | **{s_all:,.0f}** | {cpu_all:,.0f} |")
    return "\n".join(lines) + "\n"


def render(name: str, args: argparse.Namespace) -> str | None:
    results = Path(args.results)
    if name == "findings":
        return findings_block(results, args.run, args.control)
    if name == "diagnostics":
        return diagnostics_block(results, [args.run, args.fresh, args.control])
    if name == "compare":
        return compare_block(results, args.run)
    if name == "stages":
        return stages_block(results, args.run)
    if name == "steering":
        return steering_block(results, args.run)
    if name == "steering_control":
        return steering_block(results, args.control)
    raise SystemExit(f"unknown generated block {name!r} (known: findings, diagnostics, compare, steering, steering_control, stages)")


def rewrite(doc: Path, args: argparse.Namespace) -> bool:
    """Rewrite ``doc``'s generated blocks (or, with ``--check``, only compare); True if it changes."""
    text = doc.read_text()
    missing: list[str] = []

    def replace(m: re.Match) -> str:
        if args.only and m["name"] not in args.only:
            return m[0]
        body = render(m["name"], args)
        if body is None:
            missing.append(m["name"])
            return m[0]
        return m[1] + body.rstrip("\n") + "\n" + m[4]

    new = BLOCK.sub(replace, text)
    for name in missing:
        print(f"{doc}: block {name!r} left as it is (its run's outputs are not under {args.results}/)", file=sys.stderr)
    if not args.check and new != text:
        doc.write_text(new)
    verb = "would change" if args.check and new != text else "rewritten" if new != text else "up to date"
    print(f"{doc}: {len(BLOCK.findall(text)) - len(missing)} block(s) {verb}", file=sys.stderr)
    return new != text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", nargs="+", default=[str(ROOT / "docs" / "results.md"), str(ROOT / "README.md")])
    ap.add_argument("--results", default="results")
    ap.add_argument("--run", default="default")
    ap.add_argument("--control", default="negative-control")
    ap.add_argument("--fresh", default="fresh-seed")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--only", nargs="+", metavar="BLOCK", help="rewrite only these blocks")
    args = ap.parse_args(argv)
    changed = [rewrite(Path(doc), args) for doc in args.doc]
    return int(args.check and any(changed))


if __name__ == "__main__":
    raise SystemExit(main())
