# Config validation, paths, wildcard constraints and input functions shared by all rules.
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from emotion_vectors.config import ConfigError, assemble_config, check_layers, describe_model, layers_to_check, validate_config
from emotion_vectors.generate import slug

try:
    # The run's config from its sources (model specs replaced whole, --config scalars read as
    # YAML), validated with schema defaults filled and emotion_list / topic_list added; a bad
    # value stops here, before any job.
    _validated = validate_config(
        assemble_config(
            workflow.config_settings.configfiles,
            workflow.config_settings.config,
            default_file=Path(workflow.basedir) / "config" / "config.yaml",
        ),
        base_dir=workflow.basedir,
    )
except ConfigError as err:
    raise WorkflowError(f"Invalid configuration: {err}") from None
config.clear()
config.update(_validated)

RUN = config["run"]
RESULTS = f"results/{RUN}"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
MODELS_DIR = "results/models"
EMOTIONS = {slug(e): e for e in config["emotion_list"]}  # slug -> emotion word
GEN = config["models"]["generator"]
SUBJECT = config["models"]["subject"]
SELECTOR = config["models"].get("selector") or GEN  # reads candidate stories (stories.selection)
JUDGE = config["models"].get("judge") or GEN  # reads stories for the recognisability diagnostic
# Behaviour experiment: judge models (none given = the subject); the first classifies, all are validated.
BEHAVIOUR_JUDGES = config["behaviour"]["judges"] or [SUBJECT]
logger.info(f"run {RUN}: generator = {describe_model(GEN)}; subject = {describe_model(SUBJECT)}")
if layers_to_check(config):
    # Layers the config names are checked against the subject's depth (read from its config
    # file, no weights) here, not when the extraction loads it after days of story generation.
    from emotion_vectors.models import block_count

    _n_blocks = block_count(SUBJECT, MODELS_DIR)
    try:
        _stored = check_layers(config, _n_blocks)
    except ConfigError as err:
        raise WorkflowError(f"Invalid configuration: {err} (subject {describe_model(SUBJECT)})") from None
    if _stored is None:
        logger.info(f"subject's depth not readable here: its layers are checked when the extraction loads it")


wildcard_constraints:
    emotion="|".join(re.escape(s) for s in EMOTIONS),
    model="[A-Za-z0-9._-]+",


def model_input(spec):
    """The prepared model directory a rule needs (packaged GGUF models only), else nothing."""
    return [f"{MODELS_DIR}/{spec['name']}"] if spec.get("gguf") else []


def wants_gpu(spec):
    return 1 if str(spec.get("device", "cpu")).startswith(("cuda", "auto")) else 0


def gguf_models():
    """Packaged GGUF models of this run (prepared once into results/models/<name>)."""
    return {m["name"]: m for m in (GEN, SUBJECT, SELECTOR, JUDGE, *BEHAVIOUR_JUDGES) if m.get("gguf")}


NEUTRAL_DIALOGUES = f"{RESULTS}/neutral/dialogues.json"


def story_shard(emotion_slug):
    return f"{RESULTS}/stories/{emotion_slug}.json"


def all_targets():
    """Every final output of the run, from the config: story shards, the neutral corpus, the
    vector store, the outputs of the analysis, of the corpus-diagnostics rules, of the steering evidence, of the behaviour experiment, of the real-text scoring and of the validation battery (names defined in the included rule files)."""
    return [
        *(story_shard(s) for s in EMOTIONS),
        NEUTRAL_DIALOGUES,
        *VECTOR_OUTPUTS,
        *rules.analyze.output,
        *DIAGNOSTICS_OUTPUTS,
        *STEERING_OUTPUTS,
        *BEHAVIOUR_OUTPUTS,
        *SCORING_OUTPUTS,
        *BATTERY_OUTPUTS,
        *FINDINGS_OUTPUTS,
    ]
