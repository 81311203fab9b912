"""Snakemake script of rule `analyze`: emotion_vectors.analysis.analyze on the run's vectors."""

from pathlib import Path

from emotion_vectors.analysis import analyze
from emotion_vectors.core.jobs import start_job

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
p = smk.params
model = tokenizer = None
if p.logit_lens:
    from emotion_vectors.analysis.logit_lens import load_lens
    from emotion_vectors.core.devices import release_for_model

    release_for_model(p.subject, log=log.info)  # one model per GPU: idle model servers exit first
    # Only the final norm and the unembedding are read from the checkpoint, not the model.
    model, tokenizer = load_lens(p.subject, p.models_dir)
    log.info("logit lens with %s (%s): %s", model.info["name"], model.info["path"],
             {k: model.info[k] for k in ("files_read", "loaded_bytes", "checkpoint_bytes")})
out_dir = Path(smk.output.summary).parent
summary = analyze(
    smk.input.vectors,
    out_dir,
    kind=p.kind,
    k_clusters=int(p.k_clusters),
    k_range=tuple(int(k) for k in p.k_range),
    n_bootstrap=int(p.n_bootstrap),
    seed=int(p.seed),
    model=model,
    tokenizer=tokenizer,
    top_k_tokens=int(p.top_k_tokens),
)
missing = [f for f in smk.output if not Path(f).exists()]
if missing:
    raise RuntimeError(f"analyze did not write {missing}")
log.info("analysis done: main layer %s, timings %s", summary["main_layer"], summary["timings_s"])
