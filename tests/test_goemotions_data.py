"""The shipped GoEmotions sample (data/goemotions) and the default run's use of it.

The file is what its README says (columns, row count, GoEmotions' 28 label names, no empty text,
unique ids), the workflow's file loader reads every row back, and the default config points the
emotion-level check at it with the right columns; every label the default run's emotions map to
has enough texts, and enough without it, for its emotions to be tested.
"""

from __future__ import annotations

import csv
import io
import re

import pytest

from emotion_vectors.core.config import REPO_ROOT, load_config
from emotion_vectors.reading.corpora import load_file

DATA = REPO_ROOT / "data" / "goemotions"
SAMPLE = DATA / "test_sample.tsv"
SAMPLE_REL = "data/goemotions/test_sample.tsv"

# goemotions/data/emotions.txt of google-research/google-research: label id i is line i.
GOEMOTIONS_LABELS = [
    "admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion",
    "curiosity", "desire", "disappointment", "disapproval", "disgust", "embarrassment",
    "excitement", "fear", "gratitude", "grief", "joy", "love", "nervousness", "optimism",
    "pride", "realization", "relief", "remorse", "sadness", "surprise", "neutral",
]


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    text = SAMPLE.read_bytes().decode("utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t")
    assert reader.fieldnames == ["text", "labels", "id"]
    out = list(reader)
    assert all(None not in r and all(v is not None for v in r.values()) for r in out), "a row with too many/few fields"
    return out


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(REPO_ROOT / "config" / "config.yaml")


def test_sample_matches_its_readme(rows):
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    documented = re.search(r"`test_sample\.tsv` \| ([\d,]+) comments", readme)
    assert documented, "README.md should give the sample's row count in its file table"
    assert len(rows) == int(documented.group(1).replace(",", ""))
    assert "CC BY 4.0" in readme and "https://creativecommons.org/licenses/by/4.0/" in readme
    assert "b91598b43297db06cca27a29fe2d0442dffea029" in readme and "goemotions/data/test.tsv" in readme
    assert "Demszky" in readme


def test_sample_rows_are_clean(rows):
    assert all(r["text"].strip() for r in rows), "an empty text"
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids), "repeated comment ids"
    assert all(re.fullmatch(r"[a-z0-9]{7}", i) for i in ids)
    for r in rows:
        labels = r["labels"].split(",")
        assert labels and all(lab in GOEMOTIONS_LABELS for lab in labels), r
        assert len(set(labels)) == len(labels), r


def test_emotions_file_is_goemotions_labels():
    assert (DATA / "emotions.txt").read_text(encoding="utf-8").split("\n") == GOEMOTIONS_LABELS


def test_loader_reads_every_row(rows):
    recs = load_file(SAMPLE, "text", label_column="labels", id_column="id")
    assert [r["id"] for r in recs] == [r["id"] for r in rows]
    assert [r["text"] for r in recs] == [r["text"] for r in rows]
    assert [r["label"] for r in recs] == [r["labels"] for r in rows]


def test_default_config_reads_the_sample_for_the_emotion_check(config):
    scoring = config["scoring"]
    corpus = scoring["corpora"]["goemotions"]
    assert corpus["source"] == "file" and corpus["path"] == SAMPLE_REL
    assert (REPO_ROOT / corpus["path"]).is_file()
    assert (corpus["text_column"], corpus["label_column"], corpus["id_column"]) == ("text", "labels", "id")
    assert corpus["n"] is None  # every row: the sample is already drawn
    spec = scoring["emotion_labelled"]["goemotions"]
    assert spec["label_column"] == "label"  # the corpus jsonl's column (the loaders write `label`)
    assert spec["separator"] == ","


def test_default_run_emotions_are_testable_on_the_sample(rows, config):
    scoring = config["scoring"]
    spec = scoring["emotion_labelled"]["goemotions"]
    label_map = spec.get("labels") or scoring["emotion_labels"]
    emotions = set(config["emotions"])
    mapped = {label for label, m in label_map.items() if emotions & set(m["emotions"])}
    assert mapped == {"fear", "joy", "excitement", "sadness", "anger", "gratitude", "pride"}
    sets = [set(r["labels"].split(spec["separator"])) for r in rows]
    for label in mapped:
        n_pos = sum(label in s for s in sets)
        assert n_pos >= spec["min_positive"] and len(sets) - n_pos >= spec["min_positive"], label
        assert n_pos >= min(40, {"pride": 16}.get(label, 40)), (label, n_pos)  # the sampling's quota
