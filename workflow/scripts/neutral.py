from emotion_vectors.config import read_list
from emotion_vectors.generate import Checkpoint, generate_neutral, load_prompts, write_json_atomic
from emotion_vectors.jobs import start_job
from emotion_vectors.models import load_model
from emotion_vectors.provenance import provenance
from emotion_vectors.service import release_for_model

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
p = smk.params
prompts = load_prompts(smk.config["prompts_dir"], "neutral")
release_for_model(p.generator, log=log.info)  # one model per GPU: idle model servers exit first
lm = load_model(p.generator, p.models_dir)
# Screen against all emotion words of the study, not only this run's.
all_emotions = read_list(p.all_emotions_file, "emotions_file")
corpus = generate_neutral(
    lm.model, lm.tokenizer, list(p.topics), dict(p.settings), prompts, all_emotions,
    output=smk.output[0], log=log.info,
)
corpus["provenance"] = provenance(
    stage="neutral",
    config_section={"neutral": dict(p.settings), "topics": list(p.topics), "prompts": prompts},
    model_info=lm.info,
)
write_json_atomic(corpus, smk.output[0])
Checkpoint(smk.output[0], "").clear()
log.info("wrote %d dialogues (%d flagged with emotion words)", corpus["n_dialogues"],
         corpus["flagged_emotion_words"]["n"])
