"""Each job opens a vector store once and passes it down (``store_layout.counting_opens``).

The scoring CLI, the ``score_corpus`` job (its model server replaced by the tiny model read in
process), ``analyze`` and the analysis CLI with the logit lens run on a tiny store; every store
path must be opened by ``read_store`` exactly once.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import TINY_RUN_EMOTIONS, tiny_subject_run
from emotion_vectors.extraction.reading import LocalReader
from emotion_vectors.vectors.store_layout import counting_opens, read_store

EMOTIONS = TINY_RUN_EMOTIONS
TEXTS = [
    "The sun came out and we laughed all afternoon in the park.",
    "Rain again. The bus was late and nobody answered the phone.",
    "We won the game in the last minute and everyone cheered!",
    "He waited in the dark hallway, listening to the footsteps come closer.",
    "The report is due on Friday; please send comments before then.",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama):
    """The tiny Llama saved as the subject model, a store of random vectors naming it, and
    neutral activations beside the store (conftest.tiny_subject_run)."""
    return tiny_subject_run(tmp_path_factory.mktemp("run"), tiny_llama)


def _once(counts, *paths) -> None:
    assert dict(counts) == {Path(p).resolve(): 1 for p in paths}


def test_counting_opens_counts_each_read():
    with pytest.raises(Exception):
        with counting_opens() as counts:
            read_store("/nonexistent/vectors.zarr")
    assert counts[Path("/nonexistent/vectors.zarr")] == 1


def test_score_cli_opens_the_store_once(tiny_run, tmp_path):
    from emotion_vectors.reading import score as score_mod

    src = tmp_path / "in.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(src, index=False)
    out = tmp_path / "scores.parquet"
    with counting_opens() as counts:
        rc = score_mod.main([str(tiny_run["store"]), str(src), "--text-column", "text", "--layer", "3",
                             "--baseline", "neutral", "--server", "never", "--out", str(out)])
    assert rc == 0 and out.exists()
    _once(counts, tiny_run["store"])


def test_score_corpus_job_opens_the_store_once(tiny_run, tmp_path, monkeypatch):
    from emotion_vectors.reading import jobs

    class InProcess(LocalReader):
        def __init__(self, handle):
            super().__init__(tiny_run["model"], tiny_run["tok"], {"name": "tiny", "path": str(tiny_run["model_dir"]),
                                                                  "server": {"pid": 0}})

    monkeypatch.setattr(jobs, "server_from_params", lambda params: None)
    monkeypatch.setattr(jobs, "ServerReader", InProcess)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"t{i}", "text": t, "label": "x"}) + "\n"
                              for i, t in enumerate(TEXTS)))
    smk = SimpleNamespace(
        input=SimpleNamespace(vectors=str(tiny_run["store"]), corpus=str(corpus),
                              neutral=str(tiny_run["root"] / "activations" / "neutral.zarr")),
        output=SimpleNamespace(scores=str(tmp_path / "scores.parquet"), meta=str(tmp_path / "scores.parquet.json")),
        params=SimpleNamespace(settings={"layer": None, "pool": "from:1", "baseline": "neutral", "max_tokens": 64,
                                         "batch_size": 4}, label_column="label", server={}),
        wildcards=SimpleNamespace(corpus="tiny"),
    )
    import logging

    with counting_opens() as counts:
        jobs.score_corpus_job(smk, logging.getLogger("test"))
    assert Path(smk.output.scores).exists()
    _once(counts, tiny_run["store"])


def test_analysis_opens_the_store_once(tiny_run, tmp_path):
    from emotion_vectors.analysis import analyze

    with counting_opens() as counts:
        analyze(tiny_run["store"], tmp_path / "a", k_clusters=3, k_range=(2, 4), n_bootstrap=10)
    _once(counts, tiny_run["store"])


def test_analysis_cli_with_the_lens_opens_the_store_once(tiny_run, tmp_path, capsys):
    from emotion_vectors.analysis.__main__ import main

    with counting_opens() as counts:
        rc = main([str(tiny_run["store"]), str(tmp_path / "b"), "--n-bootstrap", "10", "--k-clusters", "3",
                   "--k-range", "2", "4", "--logit-lens", "--top-k-tokens", "5"])
    assert rc == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["main_layer"] == 3
    _once(counts, tiny_run["store"])
