from emotion_vectors.core.config import read_list
from emotion_vectors.core.common import write_json_atomic
from emotion_vectors.corpus.generate import Checkpoint, generate_neutral, load_generator, load_prompts
from emotion_vectors.core.jobs import start_job
from emotion_vectors.core.provenance import provenance

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
p = smk.params
prompts = load_prompts(smk.config["prompts_dir"], "neutral")
# The generation backend of models.generator (in process, or an OpenAI-compatible server).
generator, model_info, _ = load_generator(p.generator, p.models_dir, log=log.info)
# Screen against all emotion words of the study, not only this run's.
all_emotions = read_list(p.all_emotions_file, "emotions_file")
corpus = generate_neutral(
    generator, list(p.topics), dict(p.settings), prompts, all_emotions,
    output=smk.output[0], log=log.info,
)
corpus["provenance"] = provenance(
    stage="neutral",
    config_section={"neutral": dict(p.settings), "topics": list(p.topics), "prompts": prompts},
    model_info=model_info,
    extra={"generation": corpus.pop("generation")},
)
write_json_atomic(corpus, smk.output[0])
Checkpoint(smk.output[0], "").clear()
usage = corpus["provenance"]["generation"]["usage"]
log.info("wrote %d dialogues (%d flagged with emotion words; %d requests, %d completion tokens, %d retries)",
         corpus["n_dialogues"], corpus["flagged_emotion_words"]["n"], usage["requests"],
         usage["completion_tokens"], usage["retries_total"])
