"""Snakemake script of rule `diagnostics_summary`: the headline numbers of the corpus diagnostics
(``summary.json``) and their claims (``claims.json``): each separability method and the judge's
recognisability, Holm-corrected together, the verdict that follows, the variance shares and the
per-emotion recognisability family (emotion_vectors.vectors.diagnostics)."""

import json
from pathlib import Path

import pandas as pd

from emotion_vectors.core.claims import write_claims
from emotion_vectors.vectors.diagnostics import diagnostics_claims, headline
from emotion_vectors.core.common import write_json_atomic
from emotion_vectors.core.jobs import start_job

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
    var_extra=sep_meta.get("variance_max_layer"),
)
summary["run"] = smk.config["run"]
summary["n_stories_separability"] = sep_meta["n_stories"]
summary["judge"] = {k: recog_meta["judge"].get(k) for k in ("name", "path", "revision", "dtype")}
claims = diagnostics_claims(summary)
write_json_atomic(summary, smk.output.summary)
write_claims(claims, smk.output.claims)
log.info("corpus diagnostics: %s", summary["verdict"])
for c in claims:
    log.info("claim %s: %s (p %s, adjusted %s, %s)", c.id, c.verdict, c.p, c.p_adjusted, c.correction)
