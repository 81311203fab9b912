"""Service job: load the subject model once, then extract every shard the clients ask for."""
from emotion_vectors.extract import default_layers, validate_layers
from emotion_vectors.jobs import start_job
from emotion_vectors.models import decoder_layers, load_model
from emotion_vectors.provenance import provenance
from emotion_vectors.service import serve
from emotion_vectors.shards import write_shard

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
if smk.threads == 0:  # threads: 0 lets the service share --cores 1 with its clients
    import torch

    torch.set_num_threads(max(1, __import__("os").cpu_count() or 1))
p = smk.params
settings = dict(p.extraction)


def make_handler():
    lm = load_model(p.subject, p.models_dir, padding_side="left")
    n_blocks = len(decoder_layers(lm.model))
    layers = (
        default_layers(n_blocks, settings["layer_step"])
        if settings["layers"] == "auto"
        else validate_layers(settings["layers"], n_blocks)
    )
    log.info("subject %s loaded in %.1f s; %d blocks; layers %s", lm.info["name"], lm.info["load_seconds"], n_blocks, layers)

    def handle(req):
        summary = write_shard(
            lm.model, lm.tokenizer, req["texts"], req["ids"], layers, req["output"], settings,
            name=req["name"], model_info=lm.info,
            attrs={"provenance": provenance(stage="activations", config_section=settings, extra={"texts_file": req["texts_file"], "texts_provenance": req.get("texts_provenance")})},
            log=log.info,
        )
        log.info("%s", summary)
        return summary

    return handle


serve(smk.output[0], make_handler)
