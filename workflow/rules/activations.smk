# Activations: one Zarr shard per emotion (and one for the neutral dialogues), each its own job
# and output, all filled by ONE subject-model process: `subject_server` is a Snakemake service
# that loads the model once; the per-shard jobs are thin clients (see src/emotion_vectors/service.py).
# Service and clients declare threads: 0 so that they can share one group under --cores 1.

SERVER = f"{RESULTS}/activations/subject.server.json"


def emotion_shard(emotion_slug):
    return f"{RESULTS}/activations/emotions/{emotion_slug}.zarr"


NEUTRAL_SHARD = f"{RESULTS}/activations/neutral.zarr"


rule subject_server:
    """Loads the subject model once and extracts every shard requested by the jobs below."""
    input:
        model_input(SUBJECT),
    output:
        service(SERVER),
    params:
        subject=json.dumps(SUBJECT),
        extraction=json.dumps(config["extraction"]),
        models_dir=MODELS_DIR,
    log:
        f"{LOGS}/activations/subject_server.log",
    threads: 0
    resources:
        gpu=wants_gpu(SUBJECT),
        mem_mb=4000,
    # A shell rule started with exec: Snakemake terminates a service through the shell
    # process it started, so that process must be the service itself.
    shell:
        "exec {PYTHON:q} -m emotion_vectors.serve_subject {output:q} --subject {params.subject:q}"
        " --extraction {params.extraction:q} --models-dir {params.models_dir:q} 2> {log:q}"


rule activations:
    """Mean residual-stream activation of every story of one emotion, at every layer."""
    input:
        server=SERVER,
        texts=story_shard("{emotion}"),
    output:
        directory(emotion_shard("{emotion}")),
    params:
        name=lambda wc: EMOTIONS[wc.emotion],
        extraction=config["extraction"],
    log:
        f"{LOGS}/activations/{{emotion}}.log",
    threads: 0
    script:
        "../scripts/activations_client.py"


rule neutral_activations:
    """The same for the neutral dialogues (the denoising baseline)."""
    input:
        server=SERVER,
        texts=f"{RESULTS}/neutral/dialogues.json",
    output:
        directory(NEUTRAL_SHARD),
    params:
        name="neutral",
        extraction=config["extraction"],
    log:
        f"{LOGS}/activations/neutral.log",
    threads: 0
    script:
        "../scripts/activations_client.py"


rule vectors:
    """Emotion vectors per layer: emotion mean - grand mean, neutral PCs projected out."""
    input:
        emotions=[emotion_shard(s) for s in EMOTIONS],
        neutral=NEUTRAL_SHARD,
    output:
        store=directory(f"{RESULTS}/vectors/vectors.zarr"),
        table=report(
            f"{RESULTS}/vectors/vectors.tsv",
            caption="../report/vectors.rst",
            category="Vectors",
        ),
    params:
        emotions=list(EMOTIONS.values()),
        denoise_variance=config["vectors"]["denoise_variance"],
    log:
        f"{LOGS}/vectors.log",
    benchmark:
        f"{BENCH}/vectors.tsv"
    threads: 1
    resources:
        mem_mb=8000,
    script:
        "../scripts/vectors.py"


ACTIVATION_TARGETS = [f"{RESULTS}/vectors/vectors.zarr", f"{RESULTS}/vectors/vectors.tsv"]
