"""Snakemake script of the validation battery (emotion_vectors.reading.battery; docs/battery.md).

Inputs: ``vectors`` (the run's store), ``shuffled`` (the shuffled-label store, the matched
null of every check; optional: without it the claims use the random directions and say so),
``lens_tokens`` (analysis/logit_lens_tokens.tsv), ``clusters`` (analysis/clusters.tsv). Params: ``settings`` (a mapping; all keys optional:
``layer`` (default the store's main layer), ``pool`` (default ``from:1``), ``implicit``,
``intensity``, ``thresholds`` (data file paths; default config/battery/*.yaml), ``n_draws``,
``n_draws_lens``, ``seed`` (default the thresholds file's ``null`` section), ``batch_size``),
optionally ``server`` (the activation jobs' server params: texts and the logit lens go through
the run's subject-model server, started if none is up), else ``subject`` and ``models_dir`` (load
the subject here with ``models.load_model``), else the store's provenance subject. Outputs: ``table`` (TSV, one row per check: value, threshold,
null bound, the test's p, its Holm adjustment over the checks, verdict, passed), ``summary``
(JSON: every score, per-item ranks, per-template correlations, both nulls' summaries, the leak
report, provenance) and ``claims`` (claims.json: ``battery.<check>``).
"""

import time

import pandas as pd

from emotion_vectors.reading.battery import (
    load_implicit,
    load_intensity,
    load_thresholds,
    run_battery,
    summary_json,
)
from emotion_vectors.core.claims import write_claims
from emotion_vectors.core.common import write_json_atomic
from emotion_vectors.core.jobs import start_job
from emotion_vectors.core.provenance import provenance
from emotion_vectors.vectors.store_layout import read_store

smk = snakemake  # noqa: F821 - injected by Snakemake
# through the run's model server (which claims its own GPU), or a model loaded here (claim one)
log = start_job(smk, claim_gpus=not getattr(smk.params, "server", None))
s = dict(getattr(smk.params, "settings", None) or {})
store = read_store(smk.input.vectors)
started = time.perf_counter()

model = tokenizer = reader = None
model_info = None
server = getattr(smk.params, "server", None)
subject = getattr(smk.params, "subject", None)
if server:
    from emotion_vectors.extraction.reading import ServerReader
    from emotion_vectors.extraction.serve_subject import server_from_params

    reader = ServerReader(server_from_params(server))
    model_info = reader.info
    log.info("subject %s on the model server pid %s", model_info.get("name"), model_info["server"]["pid"])
elif subject:
    from emotion_vectors.core.models import load_model

    lm = load_model(subject, smk.params.models_dir)
    model, tokenizer, model_info = lm.model, lm.tokenizer, lm.info
    log.info("subject %s loaded in %.1f s", lm.info.get("name"), lm.info.get("load_seconds", 0.0))

thresholds = load_thresholds(s.get("thresholds"))
res = run_battery(
    store, model, tokenizer,
    layer=s.get("layer"),
    items=load_implicit(s.get("implicit")),
    templates=load_intensity(s.get("intensity")),
    thresholds=thresholds,
    clusters=smk.input.clusters,
    lens_tokens=smk.input.lens_tokens or None,  # [] when the analysis computes no lens: computed here
    pool=s.get("pool", "from:1"),
    n_draws=s.get("n_draws"),
    n_draws_lens=s.get("n_draws_lens"),
    seed=s.get("seed"),
    batch_size=int(s.get("batch_size", 16)),
    reader=reader,
    shuffled=getattr(smk.input, "shuffled", None) or None,
)
table = pd.DataFrame(res["checks"])
table.insert(0, "layer", res["layer"])
table.to_csv(smk.output.table, sep="\t", index=False, float_format="%.6g")
for row in res["checks"]:
    log.info("%s = %s (threshold %s; random-direction bound %s, p %s; %s: p %s, Holm %s, %s): %s",
             row["check"], row["value"], row["threshold"], row["null_p95"], row["null_p"], row["null_used"],
             row["p"], row["p_holm"], row["verdict"],
             {True: "pass", False: "FAIL", None: "cannot tell"}[row["passed"]])
write_claims(res["claims"], smk.output.claims)
if res["leaks"]["own"]:
    log.warning("battery texts naming their own emotion: %s", res["leaks"]["own"])
out = summary_json(res)
out["seconds"] = round(time.perf_counter() - started, 1)
out["provenance"] = provenance(stage="battery", config_section=s, model_info=model_info)
write_json_atomic(out, smk.output.summary)
