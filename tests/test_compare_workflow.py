"""Several subjects in one run (the real workflow, tiny models): each subject reads the same
stories into its own shards, vectors, split halves and analysis under paths that name it; every
pair is compared (and an external store, and a missing one is skipped); rebuilding one subject's
shard reruns only that subject's dependents; adding a subject reruns nothing that exists.

Two tiny random models (Llama, 5 blocks, hidden 48; Gemma 3, 6 blocks, hidden 64) read stories
written here in advance (the generator never runs), so the module takes minutes, not the real
models' half hour. A third (Gemma 4 text, 6 blocks) is the subject that is added. One core:
the DAG, not concurrency, is under test here (tests/test_workflow.py runs two jobs at a time).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from emotion_vectors.core.config import REPO_ROOT

pytestmark = pytest.mark.slow
RUN = "pytest-compare"
RESULTS = REPO_ROOT / "results" / RUN
SNAKEMAKE = str(REPO_ROOT / ".venv" / "bin" / "snakemake")
EMOTIONS = ["afraid", "calm", "happy", "sad", "angry", "proud"]
SENTENCES = {
    "afraid": "The hallway light flickered and every creak behind the door made her hold her breath.",
    "calm": "The lake was still and he watched the slow clouds drift over the quiet hills.",
    "happy": "She laughed at the birthday card and hugged her brother twice before the cake.",
    "sad": "He folded the old sweater slowly and sat alone by the window until dark.",
    "angry": "He slammed the drawer shut and shouted that nobody had listened to a single word.",
    "proud": "She held up the finished quilt and showed every stitch to the whole street.",
}
A, B, C = "tiny-llama", "tiny-gemma3", "tiny-gemma4"


def story_shard(emotion: str) -> dict:
    stories = []
    for i in range(4):
        text = (f"{SENTENCES[emotion]} Story {i}: the neighbour wanted a fence along the garden, "
                f"and the talk went on for {i + 2} long evenings over tea and plans.")
        stories.append({"id": f"{emotion}-t000-s{i:02d}", "text": text, "topic_index": 0, "seed": i})
    return {"emotion": emotion, "target": 4, "n_stories": 4, "complete": True, "stories": stories,
            "provenance": {"model": {"name": "written-by-the-test"}, "config_hash": "test"}}


def neutral_corpus() -> dict:
    dialogues = [{"id": f"neutral-t000-d{i}", "topic_index": 0,
                  "text": (f"Human: How do I measure a garden for a fence, case {i}?\n"
                           f"Assistant: Measure each side with a tape, add {i + 1} metres for the gate, "
                           "and write the lengths down before you buy the posts.")} for i in range(4)]
    return {"target": 4, "n_dialogues": 4, "complete": True, "dialogues": dialogues, "provenance": {}}


def spec(name: str, path: Path) -> dict:
    return {"name": name, "path": str(path), "dtype": "float32", "device": "cpu"}


def write_config(path: Path, models: dict[str, Path], subjects: list[str], external: dict) -> Path:
    cfg = {
        "run": RUN, "emotions": EMOTIONS, "n_topics": 1, "prompts_dir": "config/prompts/miniature",
        "models": {"generator": spec(A, models[A]), "subject": spec(A, models[A]),
                   "subjects": [spec(n, models[n]) for n in subjects]},
        "extraction": {"layers": "auto", "layer_step": 2, "pool_start": 2, "batch_size": 4},
        "analysis": {"k_clusters": 2, "k_range": [2, 3], "n_bootstrap": 20, "logit_lens": False},
        "compare": {"external": external, "n_permutations": 99, "n_bootstrap": 20, "nn_k": 2, "k_clusters": 2,
                    "procrustes_pcs": 2, "procrustes_splits": 3},
        "findings": {"control_run": None},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def targets(subjects: list[str]) -> list[str]:
    r = f"results/{RUN}"
    return [f"{r}/compare/summary.json", f"{r}/analysis/summary.json",
            *(f"{r}/subjects/{n}/analysis/summary.json" for n in subjects)]


def smk(configfile: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([SNAKEMAKE, "--configfile", str(configfile), *args], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def pending(configfile: Path, subjects: list[str], *args: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of the jobs a dry run of the comparison's targets lists."""
    out = smk(configfile, "-n", "--nolock", *targets(subjects), *args)  # options that take lists go last
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out.stdout + out.stderr):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            wc = re.search(r"wildcards: (.*)", block)
            jobs.append((m.group(1), wc.group(1).strip() if wc else ""))
    return sorted(jobs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, code_snapshot, tiny_llama, tiny_gemma3, tiny_gemma4_text):
    tmp = tmp_path_factory.mktemp("compare-workflow")
    models = {}
    for name, (model, tok) in ((A, tiny_llama), (B, tiny_gemma3), (C, tiny_gemma4_text)):
        models[name] = tmp / name
        model.save_pretrained(models[name])
        tok.save_pretrained(models[name])
    ref = {e: np.random.default_rng(i).standard_normal(32).astype(np.float32) for i, e in enumerate(EMOTIONS[:5] + ["zealous"])}
    np.savez(tmp / "ref.npz", **ref)
    external = {"ref": {"path": str(tmp / "ref.npz"), "layer": 7, "n_blocks": 12},
                "absent": {"path": str(tmp / "not-there.npz")}}
    two = write_config(tmp / "two.yaml", models, [B], external)
    three = write_config(tmp / "three.yaml", models, [B, C], external)
    shutil.rmtree(RESULTS, ignore_errors=True)
    (RESULTS / "stories").mkdir(parents=True)
    (RESULTS / "neutral").mkdir()
    for e in EMOTIONS:
        (RESULTS / "stories" / f"{e}.json").write_text(json.dumps(story_shard(e)))
    (RESULTS / "neutral" / "dialogues.json").write_text(json.dumps(neutral_corpus()))
    run = smk(two, "--cores", "1", *targets([B]))
    yield {"two": two, "three": three, "log": run.stdout + run.stderr, "models": models}
    from emotion_vectors.core.devices import release_device

    release_device(RESULTS / "activations" / ".server", "cpu")  # our tiny servers exit now
    shutil.rmtree(RESULTS, ignore_errors=True)


def test_each_subject_reads_the_same_stories_into_its_own_paths(setup):
    for name, root, d in ((A, RESULTS, 48), (B, RESULTS / "subjects" / B, 64)):
        for e in EMOTIONS:
            shard = zarr.open_group(str(root / "activations" / "emotions" / f"{e}.zarr"), mode="r")
            assert shard.attrs["complete"] and shard.attrs["ids"] == [f"{e}-t000-s{i:02d}" for i in range(4)]
            assert shard.attrs["model"]["path"] == str(setup["models"][name]) and shard["activations"].shape[2] == d
        store = zarr.open_group(str(root / "vectors" / "vectors.zarr"), mode="r")
        assert store.attrs["emotions"] == EMOTIONS and store.attrs["provenance"]["subject_model"]["path"] == str(setup["models"][name])
        halves = zarr.open_group(str(root / "vectors" / "halves.zarr"), mode="r")
        assert halves.attrs["emotions"] == [f"{e}@half{h}" for e in EMOTIONS for h in (0, 1)]
        assert halves["n_stories"][:].tolist() == [2] * 12  # two stories per half
        summary = json.loads((root / "analysis" / "summary.json").read_text())
        assert summary["n_emotions"] == 6 and summary["d"] == d
    # the layers are each model's own (auto, every 2nd block and two-thirds of the depth)
    assert zarr.open_group(str(RESULTS / "vectors" / "vectors.zarr"), mode="r").attrs["layers"] == [1, 2, 3]
    assert zarr.open_group(str(RESULTS / "subjects" / B / "vectors" / "vectors.zarr"), mode="r").attrs["layers"] == [1, 3]
    # nothing of the primary moved: no subjects/<primary> directory
    assert sorted(p.name for p in (RESULTS / "subjects").iterdir()) == [B]
    # one model server per subject, each loaded once for all its shards
    logs = sorted((RESULTS / "activations" / ".server").glob("*.log"))
    assert len(logs) == 2
    loaded = sorted(re.search(r"subject (\S+) loaded in", log.read_text()).group(1) for log in logs)
    assert loaded == sorted([A, B]) and all(log.read_text().count("loaded in") == 1 for log in logs)


def test_every_pair_is_compared_and_a_missing_store_skipped(setup):
    cmp = RESULTS / "compare"
    summary = json.loads((cmp / "summary.json").read_text())
    assert summary["pairs"] == [[A, B], [A, "ref"], [B, "ref"]]
    assert summary["crossfit"] == {f"{A}~{B}": True, f"{A}~ref": False, f"{B}~ref": False}
    assert set(summary["skipped_external"]) == {"absent"} and "does not exist" in summary["skipped_external"]["absent"]
    assert "external store absent skipped" in setup["log"]
    pair = json.loads((cmp / A / B / "summary.json").read_text())
    assert pair["n_shared"] == 6 and pair["a"]["main_layer"] == 2 and pair["b"]["main_layer"] == 3
    assert set(pair["reliability_split_half_rsa"]) == {A, B}
    ref = json.loads((cmp / A / "ref" / "summary.json").read_text())
    assert ref["n_shared"] == 5 and ref["b"]["main_layer"] == 7 and ref["b"]["layers"] == [7]
    for a, b in ((A, B), (A, "ref"), (B, "ref")):
        for f in ("measures.tsv", "cka.tsv", "valence.tsv", "cka.png"):
            assert (cmp / a / b / f).stat().st_size > 0
    claims = json.loads((cmp / "claims.json").read_text())["claims"]
    assert len(claims) == 15 and len({c["id"] for c in claims}) == 15
    # 99 permutations cannot reach Holm's first threshold over 15 tests: no p, and it says so
    assert all(c["stage"] == "compare" and c["verdict"] == "not testable" and c["p"] is None for c in claims)
    assert "External store absent skipped" in (cmp / "comparison.md").read_text()


def test_nothing_pending_after_the_run(setup):
    assert pending(setup["two"], [B]) == []


def test_rebuilding_one_subjects_shard_reruns_only_that_subjects_dependents(setup):
    shard = f"results/{RUN}/subjects/{B}/activations/emotions/calm.zarr/zarr.json"
    other = RESULTS / "activations" / "emotions" / "calm.zarr"
    before = other.stat().st_mtime_ns
    smk(setup["two"], "--cores", "1", "--force", shard)
    assert other.stat().st_mtime_ns == before
    jobs = pending(setup["two"], [B])
    assert jobs == sorted([
        ("vectors_subject", f"subject={B}"), ("split_vectors_subject", f"subject={B}"),
        ("analyze_subject", f"subject={B}"),
        ("compare_pair", f"a={A}, b={B}"), ("compare_pair", f"a={B}, b=ref"), ("compare_summary", ""),
    ]), jobs
    smk(setup["two"], "--cores", "1", *targets([B]))
    # and the primary's shard of the same emotion: the primary's dependents, B's shards untouched
    jobs = pending(setup["two"], [B], "--forcerun", f"results/{RUN}/activations/emotions/calm.zarr/zarr.json")
    assert ("activations", "emotion=calm") in jobs and not any(r.endswith("_subject") for r, _ in jobs), jobs
    assert ("compare_pair", f"a={B}, b=ref") not in jobs


def test_adding_a_subject_reruns_nothing_that_exists(setup):
    jobs = pending(setup["three"], [B, C])
    new = [j for j in jobs if C not in j[1]]
    # only the aggregate table (it lists every pair) is made again; every existing output stays
    assert new == [("compare_summary", "")], jobs
    assert sorted({r for r, _ in jobs}) == sorted({"activations_subject", "neutral_activations_subject", "vectors_subject",
                                                    "split_vectors_subject", "analyze_subject", "compare_pair",
                                                    "compare_summary"})
    assert sum(r == "activations_subject" for r, _ in jobs) == len(EMOTIONS)
    assert sorted(w for r, w in jobs if r == "compare_pair") == sorted([f"a={A}, b={C}", f"a={B}, b={C}", f"a={C}, b=ref"])


def test_a_changed_story_reruns_that_emotion_in_every_subject(setup):
    story = RESULTS / "stories" / "calm.json"
    original = story.read_text()
    shard = json.loads(original)
    shard["stories"][0]["text"] += " She closed the gate."
    story.write_text(json.dumps(shard))
    try:
        jobs = pending(setup["two"], [B])
    finally:
        story.write_text(original)
    assert jobs == sorted([
        ("activations", "emotion=calm"), ("vectors", ""), ("split_vectors", ""), ("analyze", ""),
        ("activations_subject", f"subject={B}, emotion=calm"), ("vectors_subject", f"subject={B}"),
        ("split_vectors_subject", f"subject={B}"), ("analyze_subject", f"subject={B}"),
        ("compare_pair", f"a={A}, b={B}"), ("compare_pair", f"a={A}, b=ref"), ("compare_pair", f"a={B}, b=ref"),
        ("compare_summary", ""),
    ]), jobs


def test_each_other_subject_reads_after_the_one_before_it_and_claims_its_gpu(setup, tmp_path):
    """On a GPU: every other subject's jobs take the gpu resource (one GPU job at a time) at a
    priority below everything else, the second subject's above the third's, so the subjects read
    one after the other, each loaded once; and no subject's jobs depend on another's outputs."""
    cfg = yaml.safe_load(setup["three"].read_text())
    for s in cfg["models"]["subjects"]:
        s["device"] = "cuda"
    cfg["run"] = "pytest-compare-gpu-dry"
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = smk(path, "-n", "--nolock", f"results/{cfg['run']}/compare/summary.json").stdout
    blocks = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block)
        wc = re.search(r"wildcards: (.*)", block)
        if m and wc:
            blocks[(m.group(1), wc.group(1).strip())] = block
    r = f"results/{cfg['run']}"
    b_calm = blocks[("activations_subject", f"subject={B}, emotion=calm")]
    assert "priority: -1" in b_calm and "gpu=1" in b_calm and f"{r}/vectors/vectors.zarr" not in b_calm
    c_neutral = blocks[("neutral_activations_subject", f"subject={C}")]
    assert "priority: -2" in c_neutral and "gpu=1" in c_neutral and f"{r}/subjects/{B}/" not in c_neutral
    primary = blocks[("activations", "emotion=calm")]
    assert "gpu=0" in primary and "priority" not in primary  # the primary: on the CPU, default priority
