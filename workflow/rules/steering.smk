# Steering evidence (emotion_vectors.steering.evaluate, emotion_vectors.steering.scores): does adding an
# emotion's vector to the residual stream move the subject's output towards that emotion, and does
# it do what asking for the emotion does not? A continuation test (the emotion's own word) against
# the other emotions' vectors, the shuffled-label vectors and random directions (a weak null);
# steered, prompted and unsteered replies scored for concept (NRC lexicon, emotion words masked;
# a validated judge where configured), fluency and relevance, strength chosen on one half of the
# prompts and reported on the other, KL on the neutral dialogues, shuffled-label and random
# controls, and the masked-VADER dose claims from the same replies. Many directions per forward
# pass; one job, one load of the subject. Its claims go to steering/claims.json.

STEER_DIR = f"{RESULTS}/steering"
STEERING = config["steering"]


rule steering_eval:
    """Continuation test against shuffled-label, other-emotion and random-direction nulls; steering
    judged against prompting (concept, fluency, relevance; KL on the neutral dialogues; controls);
    their claims."""
    input:
        model_input(SUBJECT),
        vectors=f"{RESULTS}/vectors/vectors.zarr/zarr.json",
        shuffled=f"{RESULTS}/vectors/shuffled.zarr/zarr.json",
        neutral=NEUTRAL_DIALOGUES,
        validation=STEERING["scores"]["validation"],
    output:
        continuation=report(
            f"{STEER_DIR}/continuation.tsv",
            caption="../report/steering_continuation_table.rst",
            category="Steering",
        ),
        continuation_strengths=f"{STEER_DIR}/continuation_strengths.tsv",
        continuation_figure=report(
            f"{STEER_DIR}/continuation.png",
            caption="../report/steering_continuation.rst",
            category="Steering",
        ),
        generations=f"{STEER_DIR}/generations.jsonl",
        scores=report(
            f"{STEER_DIR}/scores.tsv",
            caption="../report/steering_scores_table.rst",
            category="Steering",
        ),
        methods_figure=report(
            f"{STEER_DIR}/methods.png",
            caption="../report/steering_methods.rst",
            category="Steering",
        ),
        tradeoff=f"{STEER_DIR}/tradeoff.tsv",
        tradeoff_figure=report(
            f"{STEER_DIR}/tradeoff.png",
            caption="../report/steering_tradeoff.rst",
            category="Steering",
        ),
        slopes=report(
            f"{STEER_DIR}/dose_slopes.tsv",
            caption="../report/steering_dose_slopes.rst",
            category="Steering",
        ),
        validation=f"{STEER_DIR}/concept_validation.tsv",
        summary=f"{STEER_DIR}/summary.json",
        claims=f"{STEER_DIR}/claims.json",
    params:
        settings=STEERING,
        emotions=list(EMOTIONS.values()),
        subject=SUBJECT,
        models_dir=MODELS_DIR,
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/steering/steering_eval.log",
    benchmark:
        f"{BENCH}/steering/steering_eval.tsv"
    # One thread: on a small CPU two 1-thread jobs side by side do more than one 2-thread job
    # (small batches; a model server's jobs wait on its own threads). More with --set-threads.
    threads: 1
    priority: 1  # with behaviour, the longest job after the vectors: started first
    resources:
        gpu=wants_gpu(SUBJECT),
        mem_mb=4000,
    script:
        "../scripts/steering_eval.py"


# Every file of the steering evidence (for `rule all`).
STEERING_OUTPUTS = [*rules.steering_eval.output]
