# The text corpora: one story shard per emotion, and the neutral dialogues.


rule stories:
    """Stories for one emotion over the run's topics (one shard = one job)."""
    input:
        model_input(GEN),
        model_input(SELECTOR) if config["stories"]["selection"]["enabled"] else [],
        prompts=f"{config['prompts_dir']}/story.yaml",
    output:
        story_shard("{emotion}"),
    params:
        emotion=lambda wc: EMOTIONS[wc.emotion],
        topics=config["topic_list"],
        settings=config["stories"],
        generator=GEN,
        selector=SELECTOR,
        emotions=config["emotion_list"] if config["stories"]["selection"]["enabled"] else [],
        models_dir=MODELS_DIR,
    conda:
        "../../envs/corpus.yaml"
    log:
        f"{LOGS}/stories/{{emotion}}.log",
    benchmark:
        f"{BENCH}/stories/{{emotion}}.tsv"
    # One thread: small-batch decoding is overhead-bound, so two 1-thread jobs on two cores
    # beat one 2-thread job (raise with --set-threads stories=N on a bigger machine).
    threads: 1
    resources:
        gpu=wants_gpu(GEN),
        mem_mb=4000,
    script:
        "../scripts/stories.py"


rule neutral:
    """Emotionless Human/Assistant dialogues on the same topics (the denoising baseline)."""
    input:
        model_input(GEN),
        prompts=f"{config['prompts_dir']}/neutral.yaml",
    output:
        NEUTRAL_DIALOGUES,
    params:
        topics=config["topic_list"],
        settings=config["neutral"],
        emotions=config["emotion_list"],
        all_emotions_file=config["emotions_file"],
        generator=GEN,
        models_dir=MODELS_DIR,
    conda:
        "../../envs/corpus.yaml"
    log:
        f"{LOGS}/neutral.log",
    benchmark:
        f"{BENCH}/neutral.tsv"
    # One thread: small-batch decoding is overhead-bound, so two 1-thread jobs on two cores
    # beat one 2-thread job (raise with --set-threads stories=N on a bigger machine).
    threads: 1
    resources:
        gpu=wants_gpu(GEN),
        mem_mb=4000,
    script:
        "../scripts/neutral.py"
