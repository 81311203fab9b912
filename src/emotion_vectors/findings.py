"""The run's findings: every claim of every evidence step in one table, beside a control run's.

The evidence steps write ``claims.json`` (:mod:`emotion_vectors.core.claims`); the ``findings`` rule
gathers them, adds the geometry's claims (read from the analysis tables by
:func:`analysis_claims`), and writes ``findings/findings.tsv``, ``findings.md`` and
``findings.html`` — the report's first page. When a control run (the negative control:
``config/controls/negative-control.yaml``) has its own ``findings.tsv``, each claim is shown
beside the control's verdict for the same claim id; a claim that finds an effect on the
negative control is flagged, because a check that passes on stories with no emotion measures
the setup, not emotion.

    python -m emotion_vectors.findings results/default results/negative-control   # the README table
"""

from __future__ import annotations

import html
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import numpy as np

from .core.claims import ALPHA, EFFECT, NO_EFFECT, NOT_TESTABLE, Claim, holm, make_claim, min_attainable_p, read_claims

COLUMNS = ["stage", "id", "claim", "test", "null", "statistic", "interval", "interval_of", "p",
           "p_adjusted", "correction", "n_null", "verdict", "p_run", "run_verdict", "note", "figure",
           "source", "run_note"]
#: The order of the stages on the findings page (the DAG's order).
STAGE_ORDER = ("corpus", "diagnostics", "geometry", "analysis", "compare", "steering", "behaviour", "scoring",
               "reading", "battery")


def analysis_claims(rating_correlations: str | Path | pd.DataFrame, *, main_layer: int | None,
                    figure: str | None = None) -> list[Claim]:
    """The geometry's headline claims from ``analysis/rating_correlations.tsv``: PC1 follows
    human valence and PC2 human arousal at the main layer (Pearson on the covered words). These
    two tests are fixed before any result (the main layer by the depth rule), so their p is not
    corrected over the analysis table's other, exploratory rows (that Holm p is quoted in
    ``correction``); the findings' run-wide Holm corrects them with the run's other claims. The
    interval is the bootstrap with emotions resampled and the PCA refitted."""
    df = rating_correlations if isinstance(rating_correlations, pd.DataFrame) else pd.read_csv(rating_correlations, sep="\t")
    if df.empty:
        return []
    layers = sorted(df["layer"].unique())
    layer = main_layer if main_layer in layers else layers[-1]
    out = []
    for pc, rating in ((1, "valence"), (2, "arousal")):
        sel = df[(df["layer"] == layer) & (df["pc"] == pc) & (df["rating"] == rating)
                 & (df["method"] == "pearson") & (df["words"] == df["words"].iloc[0])]
        if sel.empty:
            continue
        r = sel.iloc[0]
        family = int(df["p"].notna().sum())
        out.append(make_claim(
            f"geometry.pc{pc}_{rating}", "geometry",
            f"PC{pc} of the emotion vectors follows human {rating} ratings (layer {layer})",
            test=f"Pearson correlation of PC{pc} scores with Warriner et al. {rating} over {int(r['n'])} rated emotion words; two-sided t test",
            null=f"PC{pc} scores independent of the {rating} ratings",
            statistic=float(r["r"]), p=float(r["p"]), p_adjusted=float(r["p"]),
            correction=("none within the analysis: the main layer, the PC and Pearson on the covered "
                        "words are fixed before any result (run-wide Holm covers it); "
                        f"Holm over all {family} tests of rating_correlations.tsv: {float(r['p_holm']):.2g}"),
            family=1,
            interval=[float(r["ci_low"]), float(r["ci_high"])],
            interval_of="r, 95% percentile bootstrap (emotions resampled, PCA refitted)",
            figure=figure,
        ))
    return out


def collect(paths: Iterable[str | Path], extra: Sequence[Claim] = ()) -> pd.DataFrame:
    """All claims of the given ``claims.json`` files (and ``extra``) as one table, in the DAG's
    stage order; a claim id given twice is an error (ids name claims across runs)."""
    rows = []
    for path in paths:
        for c in read_claims(path):
            rows.append(dict(c, source=str(path)))
    rows += [dict(c.to_dict(), source="analysis/rating_correlations.tsv") for c in extra]
    df = pd.DataFrame(rows, columns=COLUMNS) if rows else pd.DataFrame(columns=COLUMNS)
    dup = df["id"][df["id"].duplicated()].tolist()
    if dup:
        raise ValueError(f"claim ids given twice: {sorted(set(dup))}")
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    df["_o"] = df["stage"].map(lambda s: order.get(s, len(order)))
    return run_wide(df.sort_values(["_o"], kind="stable").drop(columns="_o").reset_index(drop=True))


def run_wide(df: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """``p_run`` and ``run_verdict``: Holm over every claim of the run that has a p (its p
    corrected within its own family). Each family's corrected p is a valid p-value, so Holm over
    them bounds the chance that *any* claim of the run is a false effect by ``alpha``: a run on
    stories without emotion (the negative control) then claims nothing with probability at least
    1 - alpha, however many claims the run makes. Claims without a p stay not testable."""
    out = df.copy()
    p = pd.to_numeric(out["p_adjusted"], errors="coerce").to_numpy(dtype=float)
    adj = holm(p)
    out["p_run"] = adj
    out["run_verdict"] = [NOT_TESTABLE if v == NOT_TESTABLE or not np.isfinite(a) else (EFFECT if a < alpha else NO_EFFECT)
                          for v, a in zip(out["verdict"], adj)]
    out["run_note"] = _run_reach(out, p, alpha)
    return out


def _run_reach(df: pd.DataFrame, p: np.ndarray, alpha: float) -> list[str]:
    """Why a claim's "no effect" run-wide may say nothing: its Monte-Carlo null's smallest p,
    ``1 / (n_null + 1)``, times the number of tested claims is at least ``alpha``, so it could
    pass the run-wide Holm only after other claims had passed first (never as the run's only
    effect). Its family's verdict is then the one its draws can support."""
    m = int(np.isfinite(p).sum())
    if "n_null" not in df:
        return [""] * len(df)
    n_null = pd.to_numeric(df["n_null"], errors="coerce").to_numpy(dtype=float)
    notes = []
    for pi, k, verdict in zip(p, n_null, df["run_verdict"]):
        floor = min_attainable_p(int(k)) if np.isfinite(k) and k > 0 else 0.0
        if not np.isfinite(pi) or verdict == EFFECT or floor * m < alpha:
            notes.append("")
            continue
        notes.append(f"run-wide this test cannot be the run's only effect: its {int(k)} draws give p >= {floor:.3g}, "
                     f"and Holm over {m} claims asks p < {alpha / m:.2g} of the first; {math.ceil(m / alpha)} draws "
                     "would let it (its family's verdict is what these draws can support)")
    return notes


def read_table(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    out = df.copy()
    out["interval"] = out["interval"].map(_interval_text)
    out.to_csv(path, sep="\t", index=False, float_format="%.6g")


def _interval_text(iv: Any) -> str:
    if isinstance(iv, str):
        return iv
    if iv is None or (isinstance(iv, float) and math.isnan(iv)) or len(iv) != 2 or any(v is None for v in iv):
        return ""
    return f"[{_num(iv[0])}, {_num(iv[1])}]"


def _num(v: Any) -> str:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return "–"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.2g}"
    return f"{x:.3g}"


def _p(v: Any) -> str:
    return "no p (see note)" if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) else _num(v)


CONTROL_FLAG = "EFFECT ON THE CONTROL"


def compare(df: pd.DataFrame, control: pd.DataFrame | None) -> pd.DataFrame:
    """``df`` with the control run's statistic, adjusted p and verdicts for the same claim ids
    (``control_verdict`` run-wide, as the run's own claims are judged; ``control_family_verdict``
    within its family only), and ``control_flag``: "EFFECT ON THE CONTROL" where the control
    finds an effect run-wide, "EFFECT ON THE CONTROL (family level)" where it finds one only
    before the run-wide correction (a control must claim nothing at either level)."""
    out = df.copy()
    if control is None or control.empty:
        return out
    c = control.set_index("id")
    out["control_statistic"] = out["id"].map(c["statistic"]) if "statistic" in c else None
    out["control_p_adjusted"] = out["id"].map(c["p_adjusted"])
    out["control_verdict"] = out["id"].map(c["run_verdict"] if "run_verdict" in c else c["verdict"]).fillna("not run")
    out["control_family_verdict"] = out["id"].map(c["verdict"]).fillna("not run")
    out["control_flag"] = [CONTROL_FLAG if run == EFFECT else f"{CONTROL_FLAG} (family level)" if fam == EFFECT else ""
                           for run, fam in zip(out["control_verdict"], out["control_family_verdict"])]
    return out


def to_markdown(df: pd.DataFrame, *, control_name: str | None = None) -> str:
    """One row per claim: claim, test / null, statistic [interval], corrected p, verdict (and
    the control's verdict)."""
    has_control = "control_verdict" in df
    head = ["claim", "test (null)", "statistic [interval]", "p (family-corrected; run-wide)", "verdict (run-wide)"]
    if has_control:
        head += [f"{control_name or 'control'}: statistic, p, verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        stat = _num(r["statistic"]) + (f" {_interval_text(r['interval'])}" if _interval_text(r["interval"]) else "")
        cells = [f"**{r['id']}**: {r['claim']}", f"{r['test']} (null: {r['null']})", stat,
                 f"{_p(r['p_adjusted'])} ({r['correction']}); {_p(r.get('p_run'))}", _verdict_text(r)]
        if has_control:
            cells.append(f"{_num(r.get('control_statistic'))}, {_p(r['control_p_adjusted'])}, {r['control_verdict']}"
                         + _flag_text(r))
        lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def to_compact_markdown(df: pd.DataFrame, *, control_name: str | None = None) -> str:
    """The README's form: one row per claim with its statistic and interval, family-corrected and
    run-wide p and run-wide verdict (and the control's); the tests and nulls are in the full
    table (``findings.md``) and ``docs/claims.md``."""
    has_control = "control_verdict" in df
    head = ["claim", "statistic [interval]", "p (family)", "p (run-wide)", "verdict"]
    if has_control:
        head.append(control_name or "control")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        stat = _num(r["statistic"]) + (f" {_interval_text(r['interval'])}" if _interval_text(r["interval"]) else "")
        verdict = _text(r.get("run_verdict")) or str(r["verdict"])
        cells = [f"`{r['id']}`", stat, _p(r["p_adjusted"]), _p(r.get("p_run")), f"**{verdict}**" if verdict == EFFECT else verdict]
        if has_control:
            cv = str(r["control_verdict"])
            cells.append(f"**{cv}** ⚠" if cv == EFFECT else f"{cv} ({_p(r.get('control_p_adjusted'))})" + _flag_text(r))
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _flag_text(r: pd.Series) -> str:
    """The control's warning for a table cell: an effect run-wide, or at family level only."""
    flag = _text(r.get("control_flag"))
    if not flag:
        return ""
    return " ⚠ effect on the control" + (" at family level" if flag != CONTROL_FLAG else "")


def _text(v: Any) -> str:
    """A cell as text: missing (None, NaN) as empty."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)


def _verdict_label(r: pd.Series) -> str:
    """The run-wide verdict, and the family's where it differs."""
    v = _text(r.get("run_verdict")) or str(r["verdict"])
    return f"{v} (in its family: {r['verdict']})" if v != str(r["verdict"]) else v


def _verdict_text(r: pd.Series) -> str:
    """The verdict with the note that qualifies it (why not testable; how far run-wide reaches)."""
    v = _verdict_label(r)
    note = _text(r.get("note"))
    if v.startswith(NOT_TESTABLE) and note:
        return f"{v}: {note}"
    if _text(r.get("run_note")):
        return f"{v}; {r['run_note']}"
    return v


def summary_counts(df: pd.DataFrame) -> dict[str, int]:
    """Claims per run-wide verdict."""
    col = "run_verdict" if "run_verdict" in df else "verdict"
    return {v: int((df[col] == v).sum()) for v in (EFFECT, NO_EFFECT, NOT_TESTABLE)}


def to_html(df: pd.DataFrame, *, run: str, control_name: str | None = None) -> str:
    """The report's findings page: counts, then the table (effects first within each stage)."""
    counts = summary_counts(df)
    has_control = "control_verdict" in df
    colour = {EFFECT: "#d9f2d9", NO_EFFECT: "#f2f2f2", NOT_TESTABLE: "#fff2cc"}
    rows = []
    for _, r in df.iterrows():
        fig = f"<br><small>figure: {html.escape(_text(r.get('figure')))}</small>" if _text(r.get("figure")) else ""
        ctrl = ""
        if has_control:
            flag = ' style="background:#f4cccc"' if r.get("control_flag") else ""
            ctrl = (f"<td{flag}>{html.escape(_num(r.get('control_statistic')))}; p {html.escape(_p(r['control_p_adjusted']))}; "
                    f"<b>{html.escape(str(r['control_verdict']))}</b>{html.escape(_flag_text(r))}</td>")
        rows.append(
            f"<tr><td>{html.escape(str(r['stage']))}</td>"
            f"<td><b>{html.escape(str(r['id']))}</b><br>{html.escape(str(r['claim']))}{fig}</td>"
            f"<td>{html.escape(str(r['test']))}<br><i>null:</i> {html.escape(str(r['null']))}</td>"
            f"<td>{html.escape(_num(r['statistic']))} {html.escape(_interval_text(r['interval']))}"
            f"<br><small>{html.escape(_text(r['interval_of']))}</small></td>"
            f"<td>{html.escape(_p(r['p_adjusted']))}<br><small>{html.escape(str(r['correction']))}</small>"
            f"<br>run-wide: {html.escape(_p(r.get('p_run')))}</td>"
            f"<td style=\"background:{colour.get(_text(r.get('run_verdict')) or r['verdict'], '#fff')}\"><b>{html.escape(_verdict_label(r))}</b>"
            f"<br><small>{html.escape(_text(r['note']))}</small>"
            + (f"<br><small><i>{html.escape(_text(r.get('run_note')))}</i></small>" if _text(r.get("run_note")) else "")
            + f"</td>{ctrl}</tr>"
        )
    ctrl_head = f"<th>{html.escape(control_name or 'control')}</th>" if has_control else ""
    weak = int(df["run_note"].map(_text).astype(bool).sum()) if "run_note" in df else 0
    flagged = int((df["control_flag"] == CONTROL_FLAG).sum()) if has_control else 0
    family_only = int(df["control_flag"].astype(str).str.endswith("(family level)").sum()) if has_control else 0
    control_line = ""
    if has_control:
        family_line = (f" <b>{family_only} more find one on the control within their family (before the run-wide "
                       "correction): read them as measuring the setup too.</b>" if family_only else "")
        control_line = (f"<p>Beside each claim: the same claim on the negative control "
                        f"(<code>{html.escape(control_name or '')}</code>: stories written without the emotion). "
                        + (f"<b>{flagged} claim(s) find an effect on the control: they measure the setup, not emotion.</b>"
                           if flagged else "No claim finds an effect on the control run-wide.") + family_line + "</p>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>findings</title>"
        "<style>body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top}</style></head><body>"
        f"<h2>Findings of run {html.escape(run)}</h2>"
        f"<p>{counts[EFFECT]} effect(s), {counts[NO_EFFECT]} without effect, {counts[NOT_TESTABLE]} not testable. "
        "Each claim names its test, its null, its p-value after correction for its family and its interval; "
        "the verdict is run-wide: Holm over every claim of the run that has a p, so that a run on stories "
        "without emotion claims nothing with probability at least 95%. "
        "“Not testable” means the test could not reject at all (e.g. a Monte-Carlo null with too few draws) "
        "or its precondition failed; the note says which."
        + (f" {weak} claim(s) without effect run-wide have too few null draws to be the run's only effect "
           "(their notes say how many would do): for them, “no effect” says little; read their family's verdict."
           if weak else "") + "</p>"
        f"{control_line}"
        "<table><tr><th>stage</th><th>claim</th><th>test and null</th><th>statistic [interval]</th>"
        f"<th>p (family-corrected; run-wide)</th><th>verdict (run-wide)</th>{ctrl_head}</tr>{''.join(rows)}</table></body></html>"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m emotion_vectors.findings [--compact] RUN_DIR [CONTROL_RUN_DIR]``: the markdown
    table of a run's findings (beside a control run's), from their ``findings/findings.tsv``;
    ``--compact``: the README's short form."""
    args = list(sys.argv[1:] if argv is None else argv)
    compact = "--compact" in args
    args = [a for a in args if a != "--compact"]
    if not args or len(args) > 2 or args[0] in ("-h", "--help"):
        print(main.__doc__)
        return 2
    tables = []
    for a in args:
        path = Path(a) / "findings" / "findings.tsv"
        if not path.exists():
            print(f"{path} does not exist: run the workflow's findings rule for that run first", file=sys.stderr)
            return 1
        tables.append(read_table(path))
    df = compare(tables[0], tables[1] if len(tables) > 1 else None)
    render = to_compact_markdown if compact else to_markdown
    print(render(df, control_name=Path(args[1]).name if len(args) > 1 else None), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
