"""The findings table: every step's claims in one table, beside the negative control's."""

import json

import numpy as np
import pandas as pd
import pytest

from emotion_vectors.core.claims import (
    EFFECT,
    NO_EFFECT,
    NOT_TESTABLE,
    decide,
    draws_needed,
    family_claims,
    make_claim,
    mc_p,
    min_attainable_p,
    read_claims,
    rejection_band,
    write_claims,
)
from emotion_vectors.findings import (
    analysis_claims,
    collect,
    compare,
    main,
    read_table,
    run_wide,
    to_compact_markdown,
    to_html,
    to_markdown,
    write_table,
)


def test_monte_carlo_p_and_its_floor():
    null = np.arange(19.0)
    assert mc_p(18.5, null) == pytest.approx(1 / 20)  # beats every draw
    assert mc_p(-1, null) == 1.0
    assert mc_p(-18.5, null, alternative="less") == pytest.approx(1 / 20)
    assert mc_p(-18.5, null, alternative="two-sided") == pytest.approx(1 / 20)
    assert np.isnan(mc_p(np.nan, null)) and np.isnan(mc_p(1.0, [np.nan]))
    assert min_attainable_p(19) == pytest.approx(0.05)
    assert draws_needed(0.05) == 20 and min_attainable_p(draws_needed(0.05)) < 0.05
    assert draws_needed(0.05, family=24) == 480 and min_attainable_p(480) < 0.05 / 24 <= min_attainable_p(479)
    with pytest.raises(ValueError, match="alternative"):
        mc_p(1.0, null, alternative="bigger")


def test_a_null_too_small_to_reject_gives_no_p_value():
    c = make_claim("s.x", "steering", "x rises", test="t", null="n", statistic=2.0, p=1 / 11, n_null=10)
    assert c.verdict == NOT_TESTABLE and c.p is None and c.p_adjusted is None
    assert "10 draws" in c.note and "at least 20" in c.note
    ok = make_claim("s.y", "steering", "y rises", test="t", null="n", statistic=2.0, p=1 / 100, n_null=99)
    assert ok.verdict == EFFECT and ok.p == pytest.approx(0.01)
    assert make_claim("s.z", "x", "z", test="t", null="n", statistic=0.1, p=0.3).verdict == NO_EFFECT
    assert decide(None) == NOT_TESTABLE and decide(float("nan")) == NOT_TESTABLE
    with pytest.raises(ValueError, match="verdict"):
        type(ok)(id="a", stage="b", claim="c", test="t", null="n", verdict="maybe")


def test_a_family_is_corrected_by_holm_and_the_verdicts_follow():
    claims = [make_claim(f"e.{i}", "x", "c", test="t", null="n", statistic=1.0, p=p)
              for i, p in enumerate([0.01, 0.02, 0.04, 0.5])]
    claims.append(make_claim("e.none", "x", "c", test="t", null="n", statistic=None, p=None, note="no judge"))
    out = family_claims(claims)
    np.testing.assert_allclose([c.p_adjusted for c in out[:4]], [0.04, 0.06, 0.08, 0.5])
    assert [c.verdict for c in out] == [EFFECT, NO_EFFECT, NO_EFFECT, NO_EFFECT, NOT_TESTABLE]
    assert out[0].family == 4 and out[0].correction == "Holm over 4 tests"
    # a Monte-Carlo null that reaches 0.05 but not 0.05/4 cannot carry the family's smallest p
    mc = [make_claim(f"m.{i}", "x", "c", test="t", null="n", statistic=1.0, p=1 / 20, n_null=19 + 20) for i in range(4)]
    assert all(c.verdict == NOT_TESTABLE for c in family_claims(mc))


def test_rejection_band_is_the_binomial_99_percent_interval():
    lo, hi = rejection_band(2000)
    assert lo < 0.05 < hi and hi - lo < 0.03
    assert rejection_band(2000, level=0.5)[1] - rejection_band(2000, level=0.5)[0] < hi - lo


def _rc_table():
    rows = []
    for layer, r1 in ((4, 0.3), (9, 0.8)):
        for pc, rating, r in ((1, "valence", r1), (2, "arousal", 0.5), (1, "arousal", 0.1)):
            rows.append({"layer": layer, "pc": pc, "rating": rating, "method": "pearson", "words": "covered",
                         "n": 23, "r": r, "ci_low": r - 0.2, "ci_high": min(r + 0.1, 1), "p": 0.2 if r < 0.5 else 1e-4,
                         "p_holm": 0.6 if r < 0.5 else 1e-3})
    return pd.DataFrame(rows)


def test_geometry_claims_come_from_the_main_layer_with_the_tables_holm(tmp_path):
    claims = analysis_claims(_rc_table(), main_layer=9)
    assert [c.id for c in claims] == ["geometry.pc1_valence", "geometry.pc2_arousal"]
    v = claims[0]
    assert v.statistic == 0.8 and v.p_adjusted == 1e-4 and v.verdict == EFFECT and v.interval == [0.6000000000000001, 0.9]
    assert v.family == 1 and "layer 9" in v.claim and "Holm over all 6 tests of rating_correlations.tsv: 0.001" in v.correction
    assert analysis_claims(_rc_table(), main_layer=4)[0].verdict == NO_EFFECT
    assert analysis_claims(pd.DataFrame(), main_layer=4) == []


def _write(tmp_path, name, claims):
    path = tmp_path / name / "claims.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_claims(claims, path)
    return path


def test_collect_compare_and_render(tmp_path):
    run = [
        _write(tmp_path, "steering", [make_claim("steering.a", "steering", "a rises", test="perm", null="shuffled", statistic=1.5, p=0.001, n_null=999, interval=[1.0, 2.0], interval_of="slope")]),
        _write(tmp_path, "diagnostics", [make_claim("diagnostics.sep", "diagnostics", "separable", test="loo", null="perm", statistic=0.2, p=0.3, n_null=199)]),
    ]
    df = collect(run, analysis_claims(_rc_table(), main_layer=9))
    assert list(df["stage"]) == ["diagnostics", "geometry", "geometry", "steering"]  # the DAG's order
    write_table(df, tmp_path / "run.tsv")
    back = read_table(tmp_path / "run.tsv")
    assert back.loc[back["id"] == "steering.a", "interval"].item() == "[1, 2]"
    control = back.copy()
    control["verdict"] = np.where(control["id"] == "steering.a", EFFECT, NO_EFFECT)  # a check that passes on the control
    control = run_wide(control.assign(p_adjusted=np.where(control["id"] == "steering.a", 0.001, 0.5)))
    shown = compare(back, control.drop(index=control.index[control["id"] == "geometry.pc2_arousal"]))
    assert shown.set_index("id").loc["steering.a", "control_flag"] == "EFFECT ON THE CONTROL"
    assert shown.set_index("id").loc["geometry.pc2_arousal", "control_verdict"] == "not run"
    md = to_markdown(shown, control_name="negative-control")
    assert md.count("\n") == 2 + len(df) and "negative-control: statistic, p, verdict" in md
    assert "⚠ effect on the control" in md.splitlines()[-1]
    page = to_html(shown, run="default", control_name="negative-control")
    assert "1 claim(s) find an effect on the control" in page and "<b>steering.a</b>" in page
    assert "3 effect(s), 1 without effect, 0 not testable" in page
    # an effect on the control within its family only (its run-wide Holm says no effect) is
    # flagged too: a control must claim nothing at either level
    control.loc[control["id"] == "steering.a", "run_verdict"] = NO_EFFECT
    shown = compare(back, control)
    assert shown.set_index("id").loc["steering.a", "control_flag"] == "EFFECT ON THE CONTROL (family level)"
    assert (shown.set_index("id").drop(index="steering.a")["control_flag"] == "").all()
    assert "⚠ effect on the control at family level" in to_markdown(shown, control_name="c").splitlines()[-1]
    assert "⚠ effect on the control at family level" in to_compact_markdown(shown, control_name="c").splitlines()[-1]
    page = to_html(shown, run="default", control_name="c")
    assert "No claim finds an effect on the control run-wide. <b>1 more find one on the control within their family" in page
    # a claim id given twice is refused: ids name claims across runs
    with pytest.raises(ValueError, match="given twice"):
        collect(run + run)


def test_a_claims_file_without_valid_verdicts_is_refused(tmp_path):
    path = tmp_path / "claims.json"
    path.write_text(json.dumps({"claims": [{"id": "x", "verdict": "probably"}]}))
    with pytest.raises(ValueError, match="claim 'x' has no valid verdict"):
        read_claims(path)


def test_cli_prints_the_table_beside_the_control(tmp_path, capsys):
    for run, verdict in (("default", EFFECT), ("negative-control", NO_EFFECT)):
        (tmp_path / run / "findings").mkdir(parents=True)
        claims = [make_claim("steering.a", "steering", "a", test="t", null="n", statistic=1.0, p=0.001 if verdict == EFFECT else 0.4)]
        write_table(collect([_write(tmp_path / run, "s", claims)]), tmp_path / run / "findings" / "findings.tsv")
    assert main([str(tmp_path / "default"), str(tmp_path / "negative-control")]) == 0
    out = capsys.readouterr().out
    assert "| **steering.a**: a |" in out and out.rstrip().endswith("0.4, no effect |")
    assert main([str(tmp_path / "missing")]) == 1
    assert main(["--compact", str(tmp_path / "default"), str(tmp_path / "negative-control")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| claim | statistic [interval] | p (family) | p (run-wide) | verdict | negative-control |"
    assert out[2] == "| `steering.a` | 1 | 0.001 | 0.001 | **effect** | no effect (0.4) |"


def test_run_wide_holm_keeps_a_run_without_emotion_from_claiming_anything():
    """Thirty claims whose nulls all hold (uniform p's): with each judged in its own family the
    run claims something most of the time; run-wide Holm keeps that at or below alpha."""
    rng = np.random.default_rng(1)
    n_runs, m = 2000, 30
    any_family = any_run = 0
    for _ in range(n_runs):
        p = rng.uniform(size=m)
        df = pd.DataFrame({"p_adjusted": p, "verdict": np.where(p < 0.05, EFFECT, NO_EFFECT)})
        any_family += (df["verdict"] == EFFECT).any()
        any_run += (run_wide(df)["run_verdict"] == EFFECT).any()
    assert any_family / n_runs > 0.7  # 1 - 0.95^30 = 0.79
    assert any_run / n_runs <= rejection_band(n_runs)[1]
    df = run_wide(pd.DataFrame({"p_adjusted": [1e-5, 0.04, 0.03, None], "verdict": [EFFECT, EFFECT, EFFECT, NOT_TESTABLE]}))
    assert list(df["run_verdict"]) == [EFFECT, NO_EFFECT, NO_EFFECT, NOT_TESTABLE]
    np.testing.assert_allclose(df["p_run"][:3], [3e-5, 0.06, 0.06])


def test_a_null_too_small_for_the_run_wide_correction_is_said_beside_its_no_effect():
    """Among 51 tested claims, a Monte-Carlo claim at its floor passes Holm's first step only
    with >= 1,020 draws (1 / (K + 1) < 0.05 / 51): with 200 it is "no effect" run-wide, and its
    note says that this says little; with 1,020 draws, or an analytic p, no note."""
    m = 51
    df = pd.DataFrame({"id": [f"c{i}" for i in range(m)], "p_adjusted": [0.5] * m, "verdict": [NO_EFFECT] * m,
                       "n_null": [None] * m, "note": [""] * m})
    df.loc[0, ["p_adjusted", "verdict", "n_null"]] = [1 / 201, EFFECT, 200]
    df.loc[1, ["p_adjusted", "verdict", "n_null"]] = [1 / 1021, EFFECT, 1020]
    df.loc[2, ["p_adjusted", "verdict", "n_null"]] = [1 / 1020, EFFECT, 1019]
    df.loc[3, ["p_adjusted", "verdict"]] = [1e-6, EFFECT]  # analytic p
    out = run_wide(df).set_index("id")
    # c2's 1,019 draws could not pass Holm's first step, but after c3 and c1 passed it does
    assert list(out.loc[["c0", "c1", "c2", "c3"], "run_verdict"]) == [NO_EFFECT, EFFECT, EFFECT, EFFECT]
    assert "200 draws" in out.loc["c0", "run_note"] and "1020 draws would let it" in out.loc["c0", "run_note"]
    assert out.loc[["c1", "c2", "c3"], "run_note"].eq("").all()
    # a claim of no effect anyway (p 0.5 with 200 draws) gets the note too: its draws could not have said more
    df.loc[4, "n_null"] = 200
    assert run_wide(df).set_index("id").loc["c4", "run_note"] != ""
    assert out.loc[[f"c{i}" for i in range(5, m)], "run_note"].eq("").all()  # no draws recorded: no note
    page = to_html(run_wide(df).assign(stage="steering", claim="x", test="t", null="n", statistic=1.0,
                                       interval=None, interval_of="", correction="", figure=""), run="r")
    assert "2 claim(s) without effect run-wide have too few null draws" in page
    assert "no effect (in its family: effect)</b>" in page
