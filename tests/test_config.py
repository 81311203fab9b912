"""Config validation: defaults filled, bad values stop with the key named."""

import copy
import subprocess

import pytest
import yaml

from emotion_vectors.config import REPO_ROOT, ConfigError, load_config, validate_config

DEFAULT = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())


def _with(**changes):
    cfg = copy.deepcopy(DEFAULT)
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def test_default_config_is_valid_and_defaults_are_filled():
    cfg = load_config(REPO_ROOT / "config" / "config.yaml")
    assert len(cfg["emotion_list"]) == 24 and len(cfg["topic_list"]) == 3
    assert cfg["extraction"]["short_text_policy"] == "skip"  # filled from the schema
    assert cfg["models"]["subject"]["quantization"] == "none"
    assert cfg["vectors"]["denoise_variance"] == 0.5


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"emotions": ["afraid", "happyy"]}, "emotions"),
        ({"emotions_file": "config/nope.txt"}, "emotions_file"),
        ({"stories__per_topic": "two"}, "stories.per_topic"),
        ({"stories__per_topic": -1}, "stories.per_topic"),
        ({"n_topics": 0}, "n_topics"),
        ({"n_topics": 101}, "n_topics"),
        ({"extraction__short_text_policy": "average"}, "extraction.short_text_policy"),
        ({"models__subject__quantization": "nf3"}, "models.subject.quantization"),
        ({"stories__unknown_key": 1}, "stories"),
        ({"vectors__denoise_variance": 1.5}, "vectors.denoise_variance"),
        ({"analysis__k_clusters": 40}, "analysis.k_clusters"),
        ({"run": "has space"}, "run"),
    ],
)
def test_bad_values_name_the_key(changes, key):
    with pytest.raises(ConfigError) as err:
        validate_config(_with(**changes), REPO_ROOT)
    assert key in str(err.value)


def test_model_needs_a_source():
    cfg = _with()
    cfg["models"]["subject"] = {"name": "x"}
    with pytest.raises(ConfigError, match="models.subject"):
        validate_config(cfg, REPO_ROOT)


def test_snakemake_stops_before_any_job_with_the_key_named():
    out = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "snakemake"), "-n", "--config", "stories={per_topic: -3}"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )
    assert out.returncode != 0
    assert "Invalid configuration: config key stories.per_topic" in out.stdout + out.stderr


@pytest.mark.parametrize("name", ["config.yaml", "gemma3-270m.yaml", "full.yaml"])
def test_shipped_configs_are_valid(name):
    load_config(REPO_ROOT / "config" / name)
