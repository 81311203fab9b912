# Config validation, paths, wildcard constraints and input functions shared by all rules.
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from emotion_vectors.core.config import (
    ConfigError,
    assemble_config,
    check_extraction_layers,
    check_layers,
    describe_model,
    layers_to_check,
    validate_config,
)
from emotion_vectors.core.common import slug

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
# Every subject of the run, the primary (models.subject) first: each reads the same stories and
# neutral dialogues. The primary's outputs are the run's (activations/, vectors/, analysis/, and
# every evidence step); another subject's go under subjects/<name>/ (rules *_subject).
SUBJECTS = {s["name"]: s for s in config["subject_list"]}
EXTRA_SUBJECTS = {name: spec for name, spec in SUBJECTS.items() if name != SUBJECT["name"]}
logger.info(f"run {RUN}: generator = {describe_model(GEN)}; subject = {describe_model(SUBJECT)}")
if EXTRA_SUBJECTS:
    logger.info(f"run {RUN}: more subjects reading the same stories: "
                + "; ".join(describe_model(s) for s in EXTRA_SUBJECTS.values()))
if layers_to_check(config):
    # Layers the config names are checked against the subject's depth (read from its config
    # file, no weights) here, not when the extraction loads it after days of story generation.
    from emotion_vectors.core.models import block_count

    _n_blocks = block_count(SUBJECT, MODELS_DIR)
    try:
        _stored = check_layers(config, _n_blocks)
    except ConfigError as err:
        raise WorkflowError(f"Invalid configuration: {err} (subject {describe_model(SUBJECT)})") from None
    if _stored is None:
        logger.info(f"subject's depth not readable here: its layers are checked when the extraction loads it")
if config["extraction"]["layers"] != "auto" and EXTRA_SUBJECTS:
    # The other subjects store the same blocks: each must have them.
    from emotion_vectors.core.models import block_count

    for _name, _spec in EXTRA_SUBJECTS.items():
        try:
            check_extraction_layers(config, block_count(_spec, MODELS_DIR), _name)
        except ConfigError as err:
            raise WorkflowError(f"Invalid configuration: {err}") from None


wildcard_constraints:
    emotion="|".join(re.escape(s) for s in EMOTIONS),
    model="[A-Za-z0-9._-]+",
    # the subjects other than the primary (whose outputs have paths of their own)
    subject="|".join(re.escape(s) for s in EXTRA_SUBJECTS) or "(?!)",


def model_input(spec):
    """The prepared model directory a rule needs (packaged GGUF models only), else nothing."""
    return [f"{MODELS_DIR}/{spec['name']}"] if spec.get("gguf") else []


def wants_gpu(spec):
    return 1 if str(spec.get("device", "cpu")).startswith(("cuda", "auto")) else 0


def gguf_models():
    """Packaged GGUF models of this run (prepared once into results/models/<name>)."""
    return {m["name"]: m for m in (GEN, SUBJECT, SELECTOR, JUDGE, *BEHAVIOUR_JUDGES, *EXTRA_SUBJECTS.values())
            if m.get("gguf")}


def subject_dir(name):
    """Where a subject's activations, vectors and analysis go: the run's own directories for the
    primary subject (as in a one-subject run), results/<run>/subjects/<name> for the others."""
    return RESULTS if name == SUBJECT["name"] else f"{RESULTS}/subjects/{name}"


#: The other subjects' directory, as a pattern of the rules that serve them (wildcard `subject`).
SUBJECT_DIR = f"{RESULTS}/subjects/{{subject}}"
SUBJECT_LOGS = f"{LOGS}/subjects/{{subject}}"
SUBJECT_BENCH = f"{BENCH}/subjects/{{subject}}"


def subject_spec(wildcards):
    """The model spec of the subject a `*_subject` job serves."""
    return EXTRA_SUBJECTS[wildcards.subject]


NEUTRAL_DIALOGUES = f"{RESULTS}/neutral/dialogues.json"


def story_shard(emotion_slug):
    return f"{RESULTS}/stories/{emotion_slug}.json"


def all_targets():
    """Every final output of the run, from the config: story shards, the neutral corpus, the
    vector store, the outputs of the analysis, of the corpus-diagnostics rules, of the steering evidence, of the behaviour experiment, of the real-text scoring and of the validation battery, the other subjects' vectors and analyses and the comparison of every pair (names defined in the included rule files)."""
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
        *SUBJECT_OUTPUTS,
        *COMPARE_OUTPUTS,
    ]
