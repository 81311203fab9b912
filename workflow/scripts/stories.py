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
select, selector_info = None, None
if p.settings["selection"]["enabled"]:
    # Best-of-n: a judge keeps the candidates whose emotion it recognises (stories.selection).
    from emotion_vectors.judge import judge_stories

    judge = lm if p.selector == p.generator else load_model(p.selector, p.models_dir)
    selector_info = judge.info
    log.info("selection judge %s (%d options, %s)", judge.info["name"], p.settings["selection"]["options"], p.settings["selection"]["scoring"])

    def select(candidates):
        return judge_stories(judge.model, judge.tokenizer, candidates, list(p.emotions), p.settings["selection"])

shard = generate_story_shard(
    lm.model, lm.tokenizer, p.emotion, list(p.topics), dict(p.settings), prompts,
    output=smk.output[0], select=select, log=log.info,
)
if shard["selection"] is not None:
    shard["selection"]["judge"] = selector_info
shard["provenance"] = provenance(
    stage="stories",
    config_section={"stories": dict(p.settings), "topics": list(p.topics), "prompts": prompts,
                    "selector": p.selector if select else None, "emotions": list(p.emotions) if select else None},
    model_info=lm.info,
)
if not shard["complete"]:
    log.warning("shard %s is short (allowed by config): %s", p.emotion, shard["shortfall"])
write_json_atomic(shard, smk.output[0])
Checkpoint(smk.output[0], "").clear()
log.info("wrote %d stories for %s", shard["n_stories"], p.emotion)
