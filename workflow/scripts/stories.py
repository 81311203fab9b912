from emotion_vectors.generate import Checkpoint, generate_story_shard, load_prompts, write_json_atomic
from emotion_vectors.jobs import start_job
from emotion_vectors.models import load_model
from emotion_vectors.provenance import provenance
from emotion_vectors.service import release_for_model

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
p = smk.params
prompts = load_prompts(smk.config["prompts_dir"], "story")
release_for_model(p.generator, log=log.info)  # one model per GPU: idle model servers exit first
lm = load_model(p.generator, p.models_dir)
log.info("generator %s loaded in %.1f s", lm.info["name"], lm.info["load_seconds"])
shard = generate_story_shard(
    lm.model, lm.tokenizer, p.emotion, list(p.topics), dict(p.settings), prompts,
    output=smk.output[0], log=log.info,
)
shard["provenance"] = provenance(
    stage="stories",
    config_section={"stories": dict(p.settings), "topics": list(p.topics), "prompts": prompts},
    model_info=lm.info,
)
if not shard["complete"]:
    log.warning("shard %s is short (allowed by config): %s", p.emotion, shard["shortfall"])
write_json_atomic(shard, smk.output[0])
Checkpoint(smk.output[0], "").clear()
log.info("wrote %d stories for %s", shard["n_stories"], p.emotion)
