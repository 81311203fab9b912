from emotion_vectors.core.common import write_json_atomic
from emotion_vectors.corpus.generate import Checkpoint, generate_story_shard, load_generator, load_prompts
from emotion_vectors.core.jobs import start_job
from emotion_vectors.core.models import load_model
from emotion_vectors.core.provenance import provenance

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
p = smk.params
prompts = load_prompts(smk.config["prompts_dir"], "story")
# The generation backend of models.generator: the model in this process, or an OpenAI-compatible
# server (checked before any work: key variable set, server answering).
generator, model_info, lm = load_generator(p.generator, p.models_dir, log=log.info)
select, selector_info = None, None
if p.settings["selection"]["enabled"]:
    # Best-of-n: a judge keeps the candidates whose emotion it recognises (stories.selection).
    from emotion_vectors.corpus.judge import judge_stories

    judge = lm if lm is not None and p.selector == p.generator else load_model(p.selector, p.models_dir)
    selector_info = judge.info
    log.info("selection judge %s (%d options, %s)", judge.info["name"], p.settings["selection"]["options"], p.settings["selection"]["scoring"])

    def select(candidates):
        return judge_stories(judge.model, judge.tokenizer, candidates, list(p.emotions), p.settings["selection"])

shard = generate_story_shard(
    generator, p.emotion, list(p.topics), dict(p.settings), prompts,
    output=smk.output[0], select=select, log=log.info,
)
if shard["selection"] is not None:
    shard["selection"]["judge"] = selector_info
shard["provenance"] = provenance(
    stage="stories",
    config_section={"stories": dict(p.settings), "topics": list(p.topics), "prompts": prompts,
                    "selector": p.selector if select else None, "emotions": list(p.emotions) if select else None},
    model_info=model_info,
    extra={"generation": shard.pop("generation")},
)
if not shard["complete"]:
    log.warning("shard %s is short (allowed by config): %s", p.emotion, shard["shortfall"])
write_json_atomic(shard, smk.output[0])
Checkpoint(smk.output[0], "").clear()
usage = shard["provenance"]["generation"]["usage"]
log.info("wrote %d stories for %s (%d requests, %d prompt + %d completion tokens, %d retries%s)",
         shard["n_stories"], p.emotion, usage["requests"], usage["prompt_tokens"], usage["completion_tokens"],
         usage["retries_total"], "" if usage["cost"] is None else f", cost {usage['cost']:.4f}")
