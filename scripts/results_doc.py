"""Rewrite the generated tables of ``docs/results.md`` from finished runs' outputs.

    .venv/bin/python scripts/results_doc.py [--run default] [--control negative-control]
                                            [--fresh fresh-seed] [--doc docs/results.md] [--check]

Each table sits between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->``; only
those blocks change, the measured prose around them stays. A block whose runs have not been made
is left as it is and named on stderr. ``--check`` changes nothing and exits 1 when a block would
change (the doc is stale against the runs on disk).

Blocks: ``findings`` (every claim of the run beside the control's verdict), ``diagnostics`` (the
corpus diagnostics of the run, its fresh-seed corpus and the control), ``compare`` (the subjects'
comparison table), ``stages`` (summed job time per rule from ``benchmarks/``).
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


def stages_block(results: Path, run: str) -> str | None:
    bench = results / run / "benchmarks"
    files = sorted(bench.rglob("*.tsv")) if bench.exists() else []
    if not files:
        return None
    lines = ["| benchmark group | jobs | job time (s) |", "|---|---:|---:|"]
    groups: dict[str, tuple[int, float]] = {}
    for f in files:
        parts = f.relative_to(bench).parts
        group = parts[0] if len(parts) > 1 else f.stem
        n, s = groups.get(group, (0, 0.0))
        groups[group] = (n + 1, s + float(pd.read_csv(f, sep="\t")["s"].sum()))
    for group, (n, s) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {group} | {n} | {s:,.0f} |")
    total = sum(s for _, s in groups.values())
    lines.append(f"| **all** | {sum(n for n, _ in groups.values())} | **{total:,.0f}** |")
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
    raise SystemExit(f"{args.doc}: unknown generated block {name!r} (known: findings, diagnostics, compare, stages)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--results", default="results")
    ap.add_argument("--run", default="default")
    ap.add_argument("--control", default="negative-control")
    ap.add_argument("--fresh", default="fresh-seed")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    doc = Path(args.doc)
    text = doc.read_text()
    missing: list[str] = []

    def replace(m: re.Match) -> str:
        body = render(m["name"], args)
        if body is None:
            missing.append(m["name"])
            return m[0]
        return m[1] + body.rstrip("\n") + "\n" + m[4]

    new = BLOCK.sub(replace, text)
    for name in missing:
        print(f"{doc}: block {name!r} left as it is (its run's outputs are not under {args.results}/)", file=sys.stderr)
    if args.check:
        return int(new != text)
    if new != text:
        doc.write_text(new)
    print(f"{doc}: {len(BLOCK.findall(text)) - len(missing)} block(s) rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
