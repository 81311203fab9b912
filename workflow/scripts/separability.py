"""Snakemake script of rule `separability`: can the stories' activations tell their emotions apart,
and how much of their variance follows emotion versus topic (emotion_vectors.vectors.diagnostics)?"""

import json
import time
from pathlib import Path

import pandas as pd

# Loaded before threadpool_limits, which limits only the BLAS/OpenMP libraries already loaded:
# scipy's own OpenBLAS and sklearn's OpenMP would otherwise run unlimited (4-6x slower when the
# cores are shared).
import scipy.optimize  # noqa: F401
import sklearn.decomposition  # noqa: F401
import sklearn.linear_model  # noqa: F401
from threadpoolctl import threadpool_limits

from emotion_vectors.vectors.diagnostics import (
    SEPARABILITY_COLUMNS,
    VARIANCE_COLUMNS,
    load_corpus,
    separability,
    separability_figure,
    variance_analysis,
)
from emotion_vectors.core.claims import draws_needed, json_safe
from emotion_vectors.core.jobs import start_job
from emotion_vectors.core.provenance import provenance

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
p = smk.params
s = dict(p.settings)
started = time.perf_counter()
need = draws_needed(0.05, 3)  # the verdict Holm-corrects three tests
for key in ("nc_permutations", "probe_permutations"):
    if int(s[key]) < need:
        log.warning("diagnostics.separability.%s = %s: its smallest p, 1/%d, cannot go below 0.05/3 (Holm over "
                    "the verdict's three tests): its claim will be 'not testable'; use at least %d",
                    key, s[key], int(s[key]) + 1, need)
with threadpool_limits(limits=max(1, int(smk.threads))):
    corpus = load_corpus(
        dict(zip(p.emotions, smk.input.emotions)),
        dict(zip(p.emotions, smk.input.stories)),
        max_per_emotion=s["max_per_emotion"],
        seed=int(s["seed"]),
    )
    n, n_layers, d = corpus.activations.shape
    log.info("%d stories (of %d), %d emotions, %d layers, width %d", n, sum(corpus.available.values()),
             len(corpus.emotions), n_layers, d)
    sep_rows, sep_extra = separability(
        corpus,
        nc_permutations=int(s["nc_permutations"]),
        probe_permutations=int(s["probe_permutations"]),
        probe_folds=int(s["probe_folds"]),
        probe_C=float(s["probe_C"]),
        probe_max_dim=int(s["probe_max_dim"]),
        seed=int(s["seed"]),
        log=log.info,
    )
    sep_seconds = time.perf_counter() - started
    var_rows, var_extra = variance_analysis(corpus, n_permutations=int(s["variance_permutations"]), seed=int(s["seed"]))
pd.DataFrame(sep_rows, columns=SEPARABILITY_COLUMNS).to_csv(smk.output.table, sep="\t", index=False, float_format="%.6g")
pd.DataFrame(var_rows, columns=VARIANCE_COLUMNS).to_csv(smk.output.variance, sep="\t", index=False, float_format="%.6g")
separability_figure(sep_rows, var_rows, smk.output.figure, title=f"run {smk.config['run']}: {n} stories, {len(corpus.emotions)} emotions")
meta = {
    "n_stories": n,
    "n_available": corpus.available,
    "n_layers": n_layers,
    "hidden_size": d,
    "layers": corpus.layers,
    "max_layer_test": sep_extra,
    "variance_max_layer": var_extra,
    "seconds": round(time.perf_counter() - started, 2),
    "seconds_separability": round(sep_seconds, 2),
    "provenance": provenance(stage="separability", config_section=s),
}
Path(smk.output.meta).write_text(json.dumps(json_safe(meta), indent=1))
log.info("separability done in %.1f s: %s", meta["seconds"], sep_extra)
