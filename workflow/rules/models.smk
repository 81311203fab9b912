# Packaged GGUF models are converted once into a local safetensors copy that loads in seconds.


rule prepare_model:
    output:
        directory(f"{MODELS_DIR}/{{model}}"),
    params:
        # Only what the conversion reads (name and GGUF source), in a canonical order: a change
        # of dtype, device or key order elsewhere in the spec must not redo the conversion.
        spec=lambda wc: json.dumps({k: gguf_models()[wc.model][k] for k in ("name", "gguf")}, sort_keys=True),
    conda:
        "../../envs/corpus.yaml"
    log:
        f"results/logs/prepare_model/{{model}}.log",
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../scripts/prepare_model.py"
