# Packaged GGUF models are converted once into a local safetensors copy that loads in seconds.


rule prepare_model:
    output:
        directory(f"{MODELS_DIR}/{{model}}"),
    params:
        spec=lambda wc: gguf_models()[wc.model],
    conda:
        "../../envs/corpus.yaml"
    log:
        f"results/logs/prepare_model/{{model}}.log",
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../scripts/prepare_model.py"
