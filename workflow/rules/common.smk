# Config validation, paths, wildcard constraints and input functions shared by all rules.
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from snakemake.exceptions import WorkflowError

from emotion_vectors.config import ConfigError, validate_config
from emotion_vectors.generate import slug

try:
    # Fills schema defaults in place and adds emotion_list / topic_list; stops before any job.
    _validated = validate_config(config, base_dir=workflow.basedir)
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


wildcard_constraints:
    emotion="|".join(re.escape(s) for s in EMOTIONS),
    model="[A-Za-z0-9._-]+",


def model_input(spec):
    """The prepared model directory a rule needs (packaged GGUF models only), else nothing."""
    return [f"{MODELS_DIR}/{spec['name']}"] if spec.get("gguf") else []


def wants_gpu(spec):
    return 1 if str(spec.get("device", "cpu")).startswith(("cuda", "auto")) else 0


def gguf_models():
    specs = {m["name"]: m for m in (GEN, SUBJECT) if m.get("gguf")}
    return specs


def story_shard(emotion_slug):
    return f"{RESULTS}/stories/{emotion_slug}.json"


def all_targets():
    targets = [story_shard(s) for s in EMOTIONS]
    targets.append(f"{RESULTS}/neutral/dialogues.json")
    for name in ("ACTIVATION_TARGETS", "ANALYSIS_OUTPUTS"):
        if name in globals():
            targets += list(globals()[name])
    return targets
