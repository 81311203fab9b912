# Activations: one Zarr shard per emotion (and one for the neutral dialogues), each its own job
# and output. The jobs are thin clients of ONE subject-model server per run and machine, which
# the first job starts and the others reuse (src/emotion_vectors/service.py): one model load
# for all shards, and the server stays invisible to the DAG, so only outdated shards rerun.
# On a cluster, group these jobs so that they share a node (profiles/slurm).


def emotion_shard(emotion_slug):
    return f"{RESULTS}/activations/emotions/{emotion_slug}.zarr"


NEUTRAL_SHARD = f"{RESULTS}/activations/neutral.zarr"
EXTRACT_PARAMS = dict(
    subject=SUBJECT,
    extraction=config["extraction"],
    models_dir=MODELS_DIR,
    results_dir=RESULTS,  # the only tree the server may write in
    server_dir=f"{RESULTS}/activations/.server",  # mode 0700: socket, key, log (service.run_server_dirs)
    idle_timeout=300,
    server_threads=0,
)


rule activations:
    """Mean residual-stream activation of every story of one emotion, at every layer."""
    input:
        model_input(SUBJECT),
        texts=story_shard("{emotion}"),
    output:
        directory(emotion_shard("{emotion}")),
    params:
        name=lambda wc: EMOTIONS[wc.emotion],
        **EXTRACT_PARAMS,
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/activations/{{emotion}}.log",
    benchmark:
        f"{BENCH}/activations/{{emotion}}.tsv"
    threads: 1
    resources:
        gpu=wants_gpu(SUBJECT),
    script:
        "../scripts/activations.py"


rule neutral_activations:
    """The same for the neutral dialogues (the denoising baseline)."""
    input:
        model_input(SUBJECT),
        texts=NEUTRAL_DIALOGUES,
    output:
        directory(NEUTRAL_SHARD),
    params:
        name="neutral",
        **EXTRACT_PARAMS,
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/activations/neutral.log",
    benchmark:
        f"{BENCH}/activations/neutral.tsv"
    threads: 1
    resources:
        gpu=wants_gpu(SUBJECT),
    script:
        "../scripts/activations.py"


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
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/vectors.log",
    benchmark:
        f"{BENCH}/vectors.tsv"
    threads: 1
    resources:
        mem_mb=8000,
    script:
        "../scripts/vectors.py"


rule shuffled_vectors:
    """Shuffled-label vectors: the emotion vectors rebuilt from the same activations with the
    emotion labels permuted within topic (vectors.n_shuffles times), the matched null of every
    emotion-specific claim (emotion_vectors.vectors.build_shuffled_store)."""
    input:
        emotions=[emotion_shard(s) for s in EMOTIONS],
        stories=[story_shard(s) for s in EMOTIONS],
        neutral=NEUTRAL_SHARD,
    output:
        store=directory(f"{RESULTS}/vectors/shuffled.zarr"),
        summary=f"{RESULTS}/vectors/shuffled.json",
    params:
        emotions=list(EMOTIONS.values()),
        denoise_variance=config["vectors"]["denoise_variance"],
        n_shuffles=config["vectors"]["n_shuffles"],
        seed=config["vectors"]["shuffle_seed"],
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/shuffled_vectors.log",
    benchmark:
        f"{BENCH}/shuffled_vectors.tsv"
    threads: 1
    resources:
        mem_mb=8000,
    script:
        "../scripts/shuffled_vectors.py"


VECTOR_OUTPUTS = [
    f"{RESULTS}/vectors/vectors.zarr",
    f"{RESULTS}/vectors/vectors.tsv",
    f"{RESULTS}/vectors/shuffled.zarr",
    f"{RESULTS}/vectors/shuffled.json",
]
