# Validation battery (emotion_vectors.reading.battery; docs/battery.md): implicit scenarios, intensity
# templates and logit-lens self-recognition, each against a pre-stated threshold
# (config/battery/thresholds.yaml, written before any result) and the shuffled-label vectors
# (the matched null; Holm over the checks), with random directions as a second, weaker null.
# Claims: battery/claims.json (battery.<check>).

BATTERY_DIR = f"{RESULTS}/battery"


rule battery:
    """Read the run's vectors on texts written for the check (no emotion word in them)."""
    input:
        model_input(SUBJECT),
        vectors=f"{RESULTS}/vectors/vectors.zarr/zarr.json",
        shuffled=f"{RESULTS}/vectors/shuffled.zarr/zarr.json",
        lens_tokens=f"{ANALYSIS_DIR}/logit_lens_tokens.tsv" if ANALYSIS_LENS else [],
        clusters=f"{ANALYSIS_DIR}/clusters.tsv",
        data=["config/battery/implicit.yaml", "config/battery/intensity.yaml", "config/battery/thresholds.yaml"],
    output:
        table=report(
            f"{BATTERY_DIR}/battery.tsv",
            caption="../report/battery.rst",
            category="Real text",
            subcategory="Validation battery",
        ),
        summary=f"{BATTERY_DIR}/summary.json",
        claims=f"{BATTERY_DIR}/claims.json",
    params:
        settings={},
        server=EXTRACT_PARAMS,  # texts and the lens go through the run's subject-model server
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/battery/battery.log",
    benchmark:
        f"{BENCH}/battery/battery.tsv"
    # One thread: on a small CPU two 1-thread jobs side by side do more than one 2-thread job
    # (small batches; a model server's jobs wait on its own threads). More with --set-threads.
    threads: 1
    resources:
        gpu=wants_gpu(SUBJECT),
        mem_mb=4000,
    script:
        "../scripts/battery.py"


BATTERY_OUTPUTS = [*rules.battery.output]
