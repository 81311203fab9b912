"""The corpus generation's workflow jobs (``workflow/rules/corpus.smk``), called by the rule's
script in ``workflow/scripts/`` with the job's Snakemake object and logger: ``stories_job`` (one
emotion's story shard, rule ``stories``) and ``neutral_job`` (the neutral dialogues, rule
``neutral``).
"""

from __future__ import annotations

import logging
from typing import Any

from emotion_vectors.core.common import write_json_atomic
from emotion_vectors.core.config import read_list
from emotion_vectors.core.models import load_model
from emotion_vectors.core.provenance import provenance
from emotion_vectors.corpus.generate import Checkpoint, generate_neutral, generate_story_shard, load_generator, load_prompts


def stories_job(smk: Any, log: logging.Logger) -> None:
    """Rule `stories`: one emotion's story shard from the generator (best-of-n with a selection
    judge when ``stories.selection`` is enabled), with its provenance.

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
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


def neutral_job(smk: Any, log: logging.Logger) -> None:
    """Rule `neutral`: the neutral dialogues, screened against every emotion word of the study,
    with their provenance.

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
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
