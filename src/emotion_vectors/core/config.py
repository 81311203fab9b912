"""Load and validate a run's configuration.

The schema (``workflow/schemas/config.schema.yaml``) is the single description of every key; this
module fills its defaults and adds the checks a schema cannot express (emotions that exist in the
emotions file, files that exist). The Snakefile and the Python entry points both call
``validate_config``, so a bad value stops with a message naming the key before any job runs.

How a run's config is assembled (``assemble_config``; the Snakefile uses it instead of Snakemake's
own deep merge):

- the default ``config/config.yaml`` is used only when no ``--configfile`` is given: a config file
  is complete on its own (schema defaults fill what it leaves out), so nothing of the default run
  leaks into it;
- several ``--configfile`` files, then ``--config`` overrides, are merged in order, key by key,
  **except model specs** (``models.generator``, ``models.subject``, ``models.judge``, and the list
  ``models.subjects``): a spec is replaced as a whole, never merged with an earlier one (a default ``gguf`` surviving next to a
  user's ``path`` once made the "31B" run convert the packaged 135M model);
- ``--config`` values are strings when nested (Snakemake parses ``stories={per_topic: 3}`` with
  YAML's BaseLoader), so their scalars are re-read as YAML 1.2 core scalars (int, float, true,
  false, null) before validation.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from emotion_vectors.core.urls import check_base_url, redact_url

REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yaml"
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")


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


def yaml_scalar(value: Any) -> Any:
    """Read the string leaves of a ``--config`` value as YAML 1.2 core scalars.

    ``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"null"`` -> None; every other string
    stays a string (YAML 1.1's ``yes``/``on`` are not booleans here, so "on edge" stays words).
    Lists and mappings are walked.
    """
    if isinstance(value, dict):
        return {k: yaml_scalar(v) for k, v in value.items()}
    if isinstance(value, list):
        return [yaml_scalar(v) for v in value]
    if not isinstance(value, str):
        return value
    text = value.strip()
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text.lower().replace(".inf", "inf").replace(".nan", "nan"))
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if text in ("null", "Null", "NULL", "~", ""):
        return None
    return value


def merge_config(base: dict[str, Any], update: dict[str, Any], *, _path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; model specs are replaced whole.

    A mapping under ``models`` (``models.generator``, ``models.subject``, ``models.judge``, …)
    is one unit: the later source's spec replaces the earlier one entirely.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = (*_path, key)
        atomic = len(path) == 2 and path[0] == "models"
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not atomic:
            out[key] = merge_config(out[key], value, _path=path)
        else:
            out[key] = copy.deepcopy(value)
    return out


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping that gives one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (plain YAML keeps the
    last one silently, so a setting written twice would lose its first value unnoticed)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *anchor" merges are allowed
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # unhashable keys are refused by the constructor below
        if first is not None:
            raise DuplicateKeyError(f"key {key!r} is given twice (first on line {first + 1}, again on "
                                    f"line {key_node.start_mark.line + 1}); keep one")
        seen[key] = key_node.start_mark.line
    loader.flatten_mapping(node)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml_unique(text: str) -> Any:
    """``yaml.safe_load`` that raises ``yaml.YAMLError`` on a duplicate key (naming both lines)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_config_file(path: str | Path) -> dict[str, Any]:
    """One YAML config file as a mapping (errors name the file; a key given twice is an error)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = load_yaml_unique(path.read_text(encoding="utf-8"))
    except DuplicateKeyError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if raw is None:
        raise ConfigError(f"config file {path} is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a mapping of keys to values, not a {type(raw).__name__}")
    return raw


def assemble_config(
    configfiles: list[str | Path] | tuple = (),
    cli_config: dict[str, Any] | None = None,
    *,
    default_file: str | Path = DEFAULT_CONFIG,
) -> dict[str, Any]:
    """The raw (unvalidated) config of a run from its sources, as the module docstring says.

    Args:
        configfiles: ``--configfile`` paths in order (none: the default config file is used).
        cli_config: ``--config`` overrides as Snakemake parsed them.
        default_file: the config used when no config file is given.
    """
    sources = [read_config_file(f) for f in configfiles] if configfiles else [read_config_file(default_file)]
    if cli_config:
        sources.append(yaml_scalar(dict(cli_config)))
    config: dict[str, Any] = {}
    for source in sources:
        config = merge_config(config, source)
    return config


def validate_config(config: dict[str, Any], base_dir: str | Path = ".") -> dict[str, Any]:
    """Validate ``config`` against the schema, fill defaults, and resolve lists.

    Returns a new dict with three derived keys added: ``emotion_list`` (the emotions of this run),
    ``topic_list`` (the topics of this run) and ``subject_list`` (every subject model, the primary
    ``models.subject`` first, then the others of ``models.subjects``; see ``_subject_list``).
    Relative paths are taken from ``base_dir``.

    Raises:
        ConfigError: naming the first wrong key, e.g. ``stories.per_topic: -1 is less than
            the minimum of 1``.
    """
    from jsonschema.exceptions import best_match

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    config = copy.deepcopy(dict(config))
    for key in ("emotion_list", "topic_list", "subject_list"):
        config.pop(key, None)
    validator = _validator_with_defaults(schema)
    # Two passes: the first fills defaults of nested objects created by the first pass.
    for _ in range(2):
        err = best_match(validator.iter_errors(config))
        if err is not None:
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            raise ConfigError(f"config key {where}: {err.message}")
    subjects = _subject_list(config["models"])
    for role, spec in _model_specs(config["models"]):
        if spec.get("path") and spec.get("gguf"):
            raise ConfigError(
                f"config key models.{role}: gives both `path` ({spec['path']}) and `gguf` "
                f"({spec['gguf'].get('file')}); a model has one source: keep one of them"
            )
    _check_server_urls(config)
    _check_generator_backend(config)
    base_dir = Path(base_dir)
    for role, spec in _model_specs(config["models"]):
        local = str(spec.get("path") or "")
        if local.startswith(("/", "./", "../", "~")) and not (base_dir / Path(local).expanduser()).is_dir():
            raise ConfigError(f"config key models.{role}.path: local model directory {local} does not exist")
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
    _check_compare(config, subjects, len(emotions))
    config["emotion_list"] = emotions
    config["topic_list"] = topics
    config["subject_list"] = subjects
    return config


def _model_specs(models: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(key, spec)`` of every model spec under ``models``: the roles, then ``subjects[i]``."""
    out = [(role, spec) for role, spec in models.items() if role != "subjects"]
    out += [(f"subjects[{i}]", spec) for i, spec in enumerate(models.get("subjects") or [])]
    return out


def _subject_list(models: dict[str, Any]) -> list[dict[str, Any]]:
    """Every subject of the run, the primary (``models.subject``) first, then the others of
    ``models.subjects`` in order. Fills ``models.subject`` from the first of ``models.subjects``
    when it is absent; an entry naming the primary must be the same spec (it is then not read
    twice); names must be unique, since they name the subjects' output directories."""
    extra = models.get("subjects") or []
    if not models.get("subject"):
        if not extra:
            raise ConfigError("config key models.subject: no subject model: give models.subject (or models.subjects)")
        models["subject"] = copy.deepcopy(extra[0])
    primary = models["subject"]
    subjects = [primary]
    seen = {primary["name"]: "models.subject"}
    for i, spec in enumerate(extra):
        name = spec["name"]
        if name in seen:
            if seen[name] == "models.subject" and spec == primary:
                continue
            raise ConfigError(
                f"config key models.subjects[{i}]: the name {name!r} is already used by {seen[name]}"
                + (" with another spec" if seen[name] == "models.subject" else "")
                + "; subject names name their outputs (results/<run>/subjects/<name>/) and must be unique"
            )
        if spec.get("backend", "hf") != "hf":
            raise ConfigError(f"config key models.subjects[{i}].backend: a subject is read in this process (hf)")
        seen[name] = f"models.subjects[{i}]"
        subjects.append(spec)
    return subjects


def _check_compare(config: dict[str, Any], subjects: list[dict[str, Any]], n_emotions: int) -> None:
    """The comparison's settings: external stores need names of their own (they name paths beside
    the subjects'); ``vector_kind`` and ``k_clusters`` default to the analysis's (filled in here);
    with two subjects, the clusters and neighbours must fit the run's emotions."""
    cmp = config["compare"]
    names = {s["name"] for s in subjects}
    for name in cmp["external"]:
        if name in names:
            raise ConfigError(f"config key compare.external.{name}: the name is a subject's; give the store another")
    if cmp["vector_kind"] is None:
        cmp["vector_kind"] = config["analysis"]["vector_kind"]
    taken = cmp["k_clusters"] is None
    if taken:
        cmp["k_clusters"] = config["analysis"]["k_clusters"]
    if len(subjects) < 2:
        return
    if cmp["k_clusters"] >= n_emotions:
        raise ConfigError(
            f"config key compare.k_clusters: {cmp['k_clusters']} clusters need more than that many emotions "
            f"(the run has {n_emotions})" + (" (taken from analysis.k_clusters)" if taken else ""))
    if cmp["nn_k"] > n_emotions - 2:
        raise ConfigError(f"config key compare.nn_k: {cmp['nn_k']} neighbours need at least {cmp['nn_k'] + 2} "
                          f"emotions (the run has {n_emotions})")


def check_extraction_layers(config: dict[str, Any], n_blocks: int | None, subject: str) -> list[int] | None:
    """``extraction.layers`` checked against one more subject's depth (the other layer keys belong
    to the primary subject: :func:`check_layers`). Returns the layers it stores, None when the
    depth is unknown here.

    Raises:
        ConfigError: naming the key, the subject and the bad index.
    """
    from .layers import LayerIndexError, default_layers, validate_layers

    extraction = config["extraction"]
    if extraction["layers"] == "auto":
        return default_layers(n_blocks, extraction["layer_step"]) if n_blocks else None
    if not n_blocks:
        return None
    try:
        return validate_layers(extraction["layers"], n_blocks)
    except LayerIndexError as err:
        raise ConfigError(f"config key extraction.layers: {err} (subject {subject} of models.subjects; "
                          "use layers: auto to store each subject's own layers)") from None


# Config keys that name one stored layer (null: the main layer).
LAYER_KEYS = (("steering", "layer"), ("behaviour", "layer"), ("scoring", "layer"))


def layers_to_check(config: dict[str, Any]) -> bool:
    """Whether the config names any layer, so that :func:`check_layers` needs the model's depth
    (``extraction.layers: auto`` and every layer key null: nothing to check)."""
    return config["extraction"]["layers"] != "auto" or any(config[s][k] is not None for s, k in LAYER_KEYS)


def check_layers(config: dict[str, Any], n_blocks: int | None) -> list[int] | None:
    """Check every layer the config names against the subject's ``n_blocks`` decoder blocks, before
    any job: ``extraction.layers`` must be distinct block indices in ``[0, n_blocks)``, and
    ``steering.layer``, ``behaviour.layer`` and ``scoring.layer`` must be stored layers (those of
    ``extraction.layers``, or of ``auto`` for this depth). ``n_blocks`` None (the depth is not
    readable here): only what needs no depth is checked. Returns the stored layers, None when
    unknown.

    Raises:
        ConfigError: naming the key, the bad index and the valid ones.
    """
    from .layers import LayerIndexError, default_layers, validate_layers

    extraction = config["extraction"]
    layers = extraction["layers"]
    stored: list[int] | None
    if layers == "auto":
        stored = default_layers(n_blocks, extraction["layer_step"]) if n_blocks else None
    else:
        try:
            stored = validate_layers(layers, n_blocks if n_blocks else max(layers) + 1)
        except LayerIndexError as err:
            raise ConfigError(f"config key extraction.layers: {err}") from None
    if stored is None:
        return None
    where = "extraction.layers" if layers != "auto" else f"extraction.layers: auto for {n_blocks} blocks"
    for section, key in LAYER_KEYS:
        value = config[section][key]
        if value is not None and value not in stored:
            raise ConfigError(
                f"config key {section}.{key}: {value} is not a stored layer ({where} stores {stored}); "
                "use one of them, or null for the main layer"
            )
    return stored


def _server_specs(node: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """``(key, spec)`` of every ``backend: openai`` spec anywhere in a config (the generator,
    behaviour and steering judges, ...), keys written as in error messages (``behaviour.judges[0]``)."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("backend") == "openai":
            found.append((where, node))
        for key, value in node.items():
            found += _server_specs(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _server_specs(value, f"{where}[{i}]")
    return found


def _check_server_urls(config: dict[str, Any]) -> None:
    """Every OpenAI-compatible server's ``base_url`` carries no credential, and a key goes over
    plain http only to this machine (``core.urls.check_base_url``): checked here, before any job,
    since the URL is announced at the start of the run and recorded in provenance."""
    for where, spec in _server_specs(config):
        try:
            check_base_url(spec.get("base_url", ""), spec.get("api_key_env"))
        except ValueError as err:
            raise ConfigError(f"config key {where}.base_url: {err}") from None


def _check_generator_backend(config: dict[str, Any]) -> None:
    """A generator behind an OpenAI-compatible server only writes text: the roles that default
    to the generator but read log-probabilities in this process (the selection judge, the corpus
    diagnostics' judge) must then name a local model."""
    models = config["models"]
    if models["generator"].get("backend") != "openai":
        return
    where = f"models.generator is an OpenAI-compatible server ({redact_url(models['generator'].get('base_url', ''))})"
    if not models.get("judge"):
        raise ConfigError(
            f"config key models.judge: absent, so the corpus diagnostics' judge would be the generator, but "
            f"{where}; that judge scores its options by log-probability in this process: set models.judge "
            "to a local model spec (name and path or gguf), e.g. the subject's"
        )
    if config["stories"]["selection"]["enabled"] and not models.get("selector"):
        raise ConfigError(
            f"config key models.selector: stories.selection is enabled and its judge defaults to the "
            f"generator, but {where}; set models.selector to a local model spec (name and path or gguf)"
        )


def load_config(path: str | Path, base_dir: str | Path | None = None) -> dict[str, Any]:
    """Read a YAML config file and validate it (see ``validate_config``)."""
    return validate_config(read_config_file(path), base_dir if base_dir is not None else REPO_ROOT)


def config_hash(section: Any) -> str:
    """Stable short hash of a JSON-able config section (recorded in artifacts)."""
    blob = json.dumps(section, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def describe_model(spec: dict[str, Any]) -> str:
    """One line naming a model spec's source, as the workflow announces it: ``name (source,
    dtype, device[, quantization])``."""
    if spec.get("backend") == "openai":
        key = f", key from ${spec['api_key_env']}" if spec.get("api_key_env") else ""
        return f"{spec.get('name')} (OpenAI-compatible server {redact_url(spec.get('base_url', ''))}, model {spec.get('model')}{key})"
    if spec.get("gguf"):
        source = f"gguf {spec['gguf']['package']}/{spec['gguf']['file']}"
    else:
        source = f"path {spec.get('path')}" + (f"@{spec['revision']}" if spec.get("revision") else "")
    extras = [spec.get("dtype", "float32"), spec.get("device", "cpu")]
    if spec.get("quantization", "none") not in (None, "none"):
        extras.append(spec["quantization"])
    return f"{spec.get('name')} ({source}, {', '.join(extras)})"
