# Activations: one Zarr shard per emotion (and one for the neutral dialogues), each its own job
# and output. The jobs are thin clients of ONE subject-model server per run and machine, which
# the first job starts and the others reuse (src/emotion_vectors/extraction/service.py): one model load
# for all shards, and the server stays invisible to the DAG, so only outdated shards rerun.
# On a cluster, group these jobs so that they share a node (profiles/slurm).


def emotion_shard(emotion_slug):
    return f"{RESULTS}/activations/emotions/{emotion_slug}.zarr/zarr.json"


NEUTRAL_SHARD = f"{RESULTS}/activations/neutral.zarr/zarr.json"
EXTRACT_PARAMS = dict(
    subject=SUBJECT,
    extraction=config["extraction"],
    models_dir=MODELS_DIR,
    results_dir=RESULTS,  # the only tree the server may write in
    # mode 0700: socket, key, log (core.devices.run_server_dirs). Every subject's server lives here (one
    # address file per model and settings), so that freeing a GPU finds them all.
    server_dir=f"{RESULTS}/activations/.server",
    idle_timeout=300,
    server_threads=0,
)


def vector_store(name):
    """A subject's vector store (``subject_dir``)."""
    return f"{subject_dir(name)}/vectors/vectors.zarr/zarr.json"


def subject_priority(wildcards):
    """The other subjects read after everything else that is ready, one subject after the other
    (the second subject's jobs at priority -1, the third's at -2, ...): with one GPU, the jobs
    that need it run one at a time (``--resources gpu``), so each subject's shards come one after
    another and its model is loaded once for all of them. A priority, not an input: an edge from
    the previous subject's outputs would rerun this subject whenever those are rebuilt (and
    Snakemake 9 drops a job's own reasons to run behind an ``ancient`` edge)."""
    return -list(SUBJECTS).index(wildcards.subject)


rule activations:
    """Mean residual-stream activation of every story of one emotion, at every layer."""
    input:
        model_input(SUBJECT),
        texts=story_shard("{emotion}"),
    output:
        emotion_shard("{emotion}"),
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
        NEUTRAL_SHARD,
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
        store=f"{RESULTS}/vectors/vectors.zarr/zarr.json",
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
    emotion-specific claim (emotion_vectors.vectors.build.build_shuffled_store)."""
    input:
        emotions=[emotion_shard(s) for s in EMOTIONS],
        stories=[story_shard(s) for s in EMOTIONS],
        neutral=NEUTRAL_SHARD,
    output:
        store=f"{RESULTS}/vectors/shuffled.zarr/zarr.json",
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


# The other subjects (models.subjects): the same rules, on their own paths under
# results/<run>/subjects/<name>/ (wildcard `subject`), each talking to its own model server, one
# subject after the other (subject_priority).
_SUBJECT_EXTRACT_PARAMS = {**EXTRACT_PARAMS, "subject": subject_spec}


use rule activations as activations_subject with:
    input:
        lambda wildcards: model_input(subject_spec(wildcards)),
        texts=story_shard("{emotion}"),
    output:
        f"{SUBJECT_DIR}/activations/emotions/{{emotion}}.zarr/zarr.json",
    params:
        name=lambda wc: EMOTIONS[wc.emotion],
        **_SUBJECT_EXTRACT_PARAMS,
    log:
        f"{SUBJECT_LOGS}/activations/{{emotion}}.log",
    benchmark:
        f"{SUBJECT_BENCH}/activations/{{emotion}}.tsv"
    priority: subject_priority
    resources:
        gpu=lambda wildcards: wants_gpu(subject_spec(wildcards)),


use rule neutral_activations as neutral_activations_subject with:
    input:
        lambda wildcards: model_input(subject_spec(wildcards)),
        texts=NEUTRAL_DIALOGUES,
    output:
        f"{SUBJECT_DIR}/activations/neutral.zarr/zarr.json",
    params:
        name="neutral",
        **_SUBJECT_EXTRACT_PARAMS,
    log:
        f"{SUBJECT_LOGS}/activations/neutral.log",
    benchmark:
        f"{SUBJECT_BENCH}/activations/neutral.tsv"
    priority: subject_priority
    resources:
        gpu=lambda wildcards: wants_gpu(subject_spec(wildcards)),


use rule vectors as vectors_subject with:
    input:
        emotions=[f"{SUBJECT_DIR}/activations/emotions/{s}.zarr/zarr.json" for s in EMOTIONS],
        neutral=f"{SUBJECT_DIR}/activations/neutral.zarr/zarr.json",
    output:
        store=f"{SUBJECT_DIR}/vectors/vectors.zarr/zarr.json",
        table=f"{SUBJECT_DIR}/vectors/vectors.tsv",
    log:
        f"{SUBJECT_LOGS}/vectors.log",
    benchmark:
        f"{SUBJECT_BENCH}/vectors.tsv"


rule split_vectors:
    """Split-half vectors: the emotion vectors built from each half of every emotion's stories
    (emotion_vectors.vectors.split_vectors), which the comparison of two subjects crosses so that no
    story is read by both sides."""
    input:
        emotions=[emotion_shard(s) for s in EMOTIONS],
        stories=[story_shard(s) for s in EMOTIONS],
        neutral=NEUTRAL_SHARD,
    output:
        store=f"{RESULTS}/vectors/halves.zarr/zarr.json",
        summary=f"{RESULTS}/vectors/halves.json",
    params:
        emotions=list(EMOTIONS.values()),
        denoise_variance=config["vectors"]["denoise_variance"],
    conda:
        "../../envs/activations.yaml"
    log:
        f"{LOGS}/split_vectors.log",
    benchmark:
        f"{BENCH}/split_vectors.tsv"
    threads: 1
    resources:
        mem_mb=8000,
    script:
        "../scripts/split_vectors.py"


use rule split_vectors as split_vectors_subject with:
    input:
        emotions=[f"{SUBJECT_DIR}/activations/emotions/{s}.zarr/zarr.json" for s in EMOTIONS],
        stories=[story_shard(s) for s in EMOTIONS],
        neutral=f"{SUBJECT_DIR}/activations/neutral.zarr/zarr.json",
    output:
        store=f"{SUBJECT_DIR}/vectors/halves.zarr/zarr.json",
        summary=f"{SUBJECT_DIR}/vectors/halves.json",
    log:
        f"{SUBJECT_LOGS}/split_vectors.log",
    benchmark:
        f"{SUBJECT_BENCH}/split_vectors.tsv"


VECTOR_OUTPUTS = [
    f"{RESULTS}/vectors/vectors.zarr/zarr.json",
    f"{RESULTS}/vectors/vectors.tsv",
    f"{RESULTS}/vectors/shuffled.zarr/zarr.json",
    f"{RESULTS}/vectors/shuffled.json",
]
