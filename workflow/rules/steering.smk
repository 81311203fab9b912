# Steering evidence (emotion_vectors.steer_eval): does adding an emotion's vector to the residual
# stream move the subject's output towards that emotion? A continuation test (the emotion's own
# word) against the other emotions' vectors, the shuffled-label vectors and random directions (a
# weak null), and a dose-response of free generations scored by VADER with the emotion words
# masked, against the shuffled-label pseudo vectors. Many directions per forward pass; one job,
# one load of the subject. Its claims go to steering/claims.json.

STEER_DIR = f"{RESULTS}/steering"
STEERING = config["steering"]


rule steering_eval:
    """Continuation test and dose-response of steered generation against shuffled-label, other-emotion
    and random-direction nulls; their claims."""
    input:
        model_input(SUBJECT),
        vectors=f"{RESULTS}/vectors/vectors.zarr",
        shuffled=f"{RESULTS}/vectors/shuffled.zarr",
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
        dose=f"{STEER_DIR}/dose_response.tsv",
        slopes=report(
            f"{STEER_DIR}/dose_slopes.tsv",
            caption="../report/steering_dose_slopes.rst",
            category="Steering",
        ),
        dose_figure=report(
            f"{STEER_DIR}/dose_response.png",
            caption="../report/steering_dose_response.rst",
            category="Steering",
        ),
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
    threads: 2
    resources:
        gpu=wants_gpu(SUBJECT),
        mem_mb=4000,
    script:
        "../scripts/steering_eval.py"


# Every file of the steering evidence (for `rule all`).
STEERING_OUTPUTS = [*rules.steering_eval.output]
