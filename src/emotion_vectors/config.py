"""Load and validate a run's configuration.

The schema (``workflow/schemas/config.schema.yaml``) is the single description of every key; this
module fills its defaults and adds the checks a schema cannot express (emotions that exist in the
emotions file, files that exist). The Snakefile and the Python entry points both call
``validate_config``, so a bad value stops with a message naming the key before any job runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value that is wrong; the message names the key."""


def _validator_with_defaults(schema: dict[str, Any]):
    """A Draft 2020-12 validator that also fills ``default:`` values into the instance."""
    from jsonschema import Draft202012Validator, validators

    base = Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    extended = validators.extend(base, {"properties": set_defaults})
    return extended(schema)


def read_list(path: str | Path, what: str) -> list[str]:
    """Non-empty, stripped lines of a text file (emotions, topics)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what}: file {path} does not exist")
    items = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    items = [item for item in items if item and not item.startswith("#")]
    if not items:
        raise ConfigError(f"{what}: file {path} is empty")
    dupes = sorted({i for i in items if items.count(i) > 1})
    if dupes:
        raise ConfigError(f"{what}: file {path} repeats {dupes}")
    return items


def validate_config(config: dict[str, Any], base_dir: str | Path = ".") -> dict[str, Any]:
    """Validate ``config`` against the schema, fill defaults, and resolve lists.

    Returns a new dict with two derived keys added: ``emotion_list`` (the emotions of this run)
    and ``topic_list`` (the topics of this run). Relative paths are taken from ``base_dir``.

    Raises:
        ConfigError: naming the first wrong key, e.g. ``stories.per_topic: -1 is less than
            the minimum of 1``.
    """
    from jsonschema.exceptions import best_match

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    config = copy.deepcopy(dict(config))
    for key in ("emotion_list", "topic_list"):
        config.pop(key, None)
    validator = _validator_with_defaults(schema)
    # Two passes: the first fills defaults of nested objects created by the first pass.
    for _ in range(2):
        err = best_match(validator.iter_errors(config))
        if err is not None:
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            raise ConfigError(f"config key {where}: {err.message}")
    base_dir = Path(base_dir)
    all_emotions = read_list(base_dir / config["emotions_file"], "emotions_file")
    topics = read_list(base_dir / config["topics_file"], "topics_file")
    if config["emotions"] == "all":
        emotions = all_emotions
    else:
        unknown = [e for e in config["emotions"] if e not in all_emotions]
        if unknown:
            raise ConfigError(
                f"config key emotions: {unknown} not in {config['emotions_file']} "
                "(check spelling; multiword emotions are written with a space, e.g. 'at ease')"
            )
        emotions = list(config["emotions"])
    n_topics = config["n_topics"]
    if n_topics is not None:
        if n_topics > len(topics):
            raise ConfigError(
                f"config key n_topics: {n_topics} exceeds the {len(topics)} topics in "
                f"{config['topics_file']}"
            )
        topics = topics[:n_topics]
    prompts_dir = base_dir / config["prompts_dir"]
    if not prompts_dir.is_dir():
        raise ConfigError(f"config key prompts_dir: {prompts_dir} is not a directory")
    k_lo, k_hi = config["analysis"]["k_range"]
    if k_lo > k_hi:
        raise ConfigError(f"config key analysis.k_range: {k_lo} > {k_hi}")
    if config["analysis"]["k_clusters"] >= len(emotions):
        raise ConfigError(
            f"config key analysis.k_clusters: {config['analysis']['k_clusters']} clusters "
            f"need more than that many emotions (the run has {len(emotions)})"
        )
    config["emotion_list"] = emotions
    config["topic_list"] = topics
    return config


def load_config(path: str | Path, base_dir: str | Path | None = None) -> dict[str, Any]:
    """Read a YAML config file and validate it (see ``validate_config``)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    return validate_config(raw, base_dir if base_dir is not None else REPO_ROOT)


def config_hash(section: Any) -> str:
    """Stable short hash of a JSON-able config section (recorded in artifacts)."""
    blob = json.dumps(section, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
