"""Snakemake script of rule `diagnostics_summary`: the headline numbers of the corpus diagnostics."""

import json
from pathlib import Path

import pandas as pd

from emotion_vectors.diagnostics import headline
from emotion_vectors.generate import write_json_atomic
from emotion_vectors.jobs import start_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
sep_meta = json.loads(Path(smk.input.separability_meta).read_text())
recog_meta = json.loads(Path(smk.input.recognisability_meta).read_text())


def records(path):
    return pd.read_csv(path, sep="\t").to_dict("records")


summary = headline(
    records(smk.input.separability),
    sep_meta["max_layer_test"],
    records(smk.input.variance),
    records(smk.input.recognisability),
)
summary["run"] = smk.config["run"]
summary["n_stories_separability"] = sep_meta["n_stories"]
summary["judge"] = {k: recog_meta["judge"].get(k) for k in ("name", "path", "revision", "dtype")}
write_json_atomic(summary, smk.output[0])
log.info("corpus diagnostics: %s", summary["verdict"])
