"""Snakemake script of rule `recognisability`: a judge model picks each story's emotion among
distractors (emotion_vectors.corpus.judge); one model load for the whole run, checkpointed per emotion."""

import json
import time
from pathlib import Path

import pandas as pd

from emotion_vectors.core.common import write_json_atomic, write_jsonl_atomic
from emotion_vectors.core.jobs import start_job
from emotion_vectors.corpus.judge import (
    RECOGNISABILITY_COLUMNS,
    clear_checkpoint,
    judge_prompt,
    recognisability,
    uses_chat_template,
)
from emotion_vectors.core.models import load_model
from emotion_vectors.core.provenance import provenance

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
p = smk.params
s = dict(p.settings)
shards = {e: json.loads(Path(f).read_text(encoding="utf-8")) for e, f in zip(p.emotions, smk.input.stories)}
lm = load_model(p.judge, p.models_dir)
log.info("judge %s loaded in %.1f s (%s, %s)", lm.info["name"], lm.info["load_seconds"], lm.info["dtype"], lm.info["device"])
started = time.perf_counter()
checkpoint = Path(smk.output.stories).with_name(Path(smk.output.stories).name + ".progress")
records, table = recognisability(
    lm.model, lm.tokenizer, shards, s, checkpoint_dir=checkpoint, judge_info=lm.info, log=log.info
)
seconds = time.perf_counter() - started
pd.DataFrame(table, columns=RECOGNISABILITY_COLUMNS).to_csv(smk.output.table, sep="\t", index=False, float_format="%.6g")
write_jsonl_atomic(records, smk.output.stories)
chat = uses_chat_template(lm.tokenizer, s["chat_template"])
write_json_atomic(
    {
        "judge": lm.info,
        "chat_template": chat,
        "example_prompt": judge_prompt(lm.tokenizer, "<story>", ["<a>", "<b>", "<c>", "<d>"], chat=chat, list_options=s["list_options"]) + " <candidate>",
        "n_stories": len(records),
        "seconds": round(seconds, 2),
        "overall": table[-1],
        "provenance": provenance(stage="recognisability", config_section=s, model_info=lm.info),
    },
    smk.output.meta,
)
clear_checkpoint(checkpoint)
log.info("recognisability: %s/%s stories recognised (%.3f vs chance %.3f) in %.0f s",
         table[-1]["correct"], table[-1]["n"], table[-1]["share"], table[-1]["chance"], seconds)
