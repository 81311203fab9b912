"""Fault 4: malformed configs, each a complete config file with one fault (and two controls that
must be accepted), run through ``snakemake -n`` (a few with ``--cores 1``)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .battery import Battery
from .common import REPO_ROOT, _remove, default_config


def malformed_configs(b: Battery) -> None:
    t0 = time.monotonic()
    smk = Path(sys.executable).with_name("snakemake")
    smk_cmd = [str(smk)] if smk.exists() else [shutil.which("snakemake") or "snakemake"]
    d = b.work / "configs"  # the config files written (the runs themselves must be the repository's)
    _remove(d)
    d.mkdir(parents=True)
    for old in (REPO_ROOT / "results").glob("faults-cfg-*"):
        _remove(old)
    records = []
    for i, case in enumerate(config_cases()):
        run_name = f"faults-cfg-{i:02d}-{case.name}"
        path = d / f"{i:02d}-{case.name}.yaml"
        if case.raw is not None:
            path.write_text(case.raw)
        else:
            cfg = copy.deepcopy(default_config())
            cfg["run"] = run_name
            case.mutate(cfg)
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        # The target goes first: --configfile and --config take several values.
        target = [f"results/{run_name}/stories/calm.json"] if case.real_run else []
        cmd = [*smk_cmd, *target, *(["--cores", "1"] if case.real_run else ["-n"]), "--configfile", str(path)]
        if case.cli:
            cmd += ["--config", *case.cli]
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
            output, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as err:
            output, rc = f"{err.stdout or ''}{err.stderr or ''}\nTIMEOUT", -1
        seconds = time.monotonic() - started
        jobs = re.findall(r"^\s*(?:local)?rule (\w+):", output, re.M) + re.findall(r"^\s*(?:Select jobs|Job \d+)", output, re.M)
        loaded = "loaded in" in output
        wrote = (REPO_ROOT / "results" / run_name).exists()
        first = error_line(output)
        names = all(s in output for s in case.expect)
        if case.accept:
            ok = rc == 0 and not wrote
        else:
            ok = rc != 0 and names and not jobs and not loaded and not wrote
        records.append({
            "n": i, "case": case.name, "what": case.what, "mode": "--cores 1" if case.real_run else "-n",
            "rc": rc, "error": first, "names_key": names, "expect": case.expect, "jobs_started": bool(jobs) and not case.accept,
            "model_loaded": loaded, "wrote_results": wrote, "ok": ok, "seconds": round(seconds, 1), "accept": case.accept,
            "file_level": case.raw is not None,
        })
        b.log(f"config {i:02d} {case.name}: rc {rc}, {'OK' if ok else 'FAILED'}: {first}")
    bad = [r for r in records if not r["accept"]]
    controls = [r for r in records if r["accept"]]
    b.details["configs"] = records
    n_real = sum(1 for r in bad if r["mode"] == "--cores 1")
    keyed = [r for r in bad if not r["file_level"]]
    b.add(
        "malformed config", len(bad), sum(r["ok"] for r in bad),
        f"{sum(r['wrote_results'] for r in bad)} results dirs written, {sum(r['model_loaded'] for r in bad)} model loads",
        f"{sum(r['names_key'] for r in keyed)}/{len(keyed)} errors name the key; the {len(bad) - len(keyed)} unreadable "
        "files (bad YAML, empty, not a mapping) stop in Snakemake's own parser, whose message names neither the file nor the line; "
        f"{n_real} also as real runs (--cores 1): no job started; controls accepted: "
        f"{sum(r['ok'] for r in controls)}/{len(controls)} (base config; nested numeric --config override); "
        f"{time.monotonic() - t0:.0f} s",
    )
    b.config_controls_ok = all(r["ok"] for r in controls)


# --------------------------------------------------------------------------- the cases


@dataclass
class ConfigCase:
    name: str
    what: str
    expect: list[str]
    mutate: Callable[[dict[str, Any]], None] = lambda cfg: None
    raw: str | None = None
    cli: list[str] = field(default_factory=list)
    real_run: bool = False
    accept: bool = False


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(cfg: dict[str, Any]) -> None:
        keys = path.split(".")
        node = cfg
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value

    return mutate


def _spec(role: str, **spec: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(cfg: dict[str, Any]) -> None:
        cfg["models"][role] = {k: v for k, v in spec.items() if v is not None}

    return mutate


def _with_base(role: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(cfg: dict[str, Any]) -> None:
        cfg["models"][role] = {**copy.deepcopy(cfg["models"][role]), **changes}

    return mutate


def config_cases() -> list[ConfigCase]:
    """30 malformed configs (each a complete config file with one fault) and 2 controls."""
    return [
        ConfigCase("yaml-syntax", "unbalanced bracket (YAML syntax error)", ["YAML"], raw="run: [faults-cfg-yaml\nmodels: {\n"),
        ConfigCase("empty-file", "empty file", ["top level"], raw=""),
        ConfigCase("not-a-mapping", "a YAML list, not a mapping", ["top level"], raw="- calm\n- sad\n"),
        ConfigCase("unknown-top-key", "misspelled top-level key `stoies`", ["stoies"], _set("stoies", {"per_topic": 2})),
        ConfigCase("unknown-nested-key", "misspelled `stories.per_topics`", ["per_topics"], _set("stories.per_topics", 2)),
        ConfigCase("negative-per-topic", "stories.per_topic: -3", ["stories.per_topic"], _set("stories.per_topic", -3)),
        ConfigCase("string-per-topic", "stories.per_topic: 'three'", ["stories.per_topic"], _set("stories.per_topic", "three")),
        ConfigCase("zero-temperature", "stories.temperature: 0", ["stories.temperature"], _set("stories.temperature", 0)),
        ConfigCase("top-p-above-1", "stories.top_p: 1.5", ["stories.top_p"], _set("stories.top_p", 1.5)),
        ConfigCase("tiny-max-new-tokens", "stories.max_new_tokens: 8", ["stories.max_new_tokens"], _set("stories.max_new_tokens", 8)),
        ConfigCase("bool-as-string", "stories.allow_shortfall: 'maybe'", ["stories.allow_shortfall"], _set("stories.allow_shortfall", "maybe")),
        ConfigCase("share-above-1", "neutral.system_prompt_share: 2", ["neutral.system_prompt_share"], _set("neutral.system_prompt_share", 2)),
        ConfigCase("negative-pool-start", "extraction.pool_start: -1", ["extraction.pool_start"], _set("extraction.pool_start", -1)),
        ConfigCase("negative-layer", "extraction.layers: [-2]", ["extraction.layers"], _set("extraction.layers", [-2])),
        ConfigCase("layers-word", "extraction.layers: every", ["extraction.layers"], _set("extraction.layers", "every")),
        ConfigCase("storage-int8", "extraction.storage_dtype: int8", ["extraction.storage_dtype"], _set("extraction.storage_dtype", "int8")),
        ConfigCase("denoise-above-1", "vectors.denoise_variance: 1.5", ["vectors.denoise_variance"], _set("vectors.denoise_variance", 1.5)),
        ConfigCase("k-clusters-too-big", "analysis.k_clusters: 30 with 24 emotions", ["analysis.k_clusters"], _set("analysis.k_clusters", 30), real_run=True),
        ConfigCase("k-range-reversed", "analysis.k_range: [10, 3]", ["analysis.k_range"], _set("analysis.k_range", [10, 3])),
        ConfigCase("unknown-emotion", "emotions: [calm, joyfull]", ["emotions", "joyfull"], _set("emotions", ["calm", "joyfull"]), real_run=True),
        ConfigCase("one-emotion", "emotions: [calm] (at least 2)", ["emotions"], _set("emotions", ["calm"])),
        ConfigCase("missing-emotions-file", "emotions_file: config/no-such-file.txt", ["emotions_file"], _set("emotions_file", "config/no-such-file.txt")),
        ConfigCase("too-many-topics", "n_topics: 1000", ["n_topics"], _set("n_topics", 1000)),
        ConfigCase("path-and-gguf", "models.subject with both path and gguf", ["models.subject"],
                   _with_base("subject", path="google/gemma-4-31B-it"), real_run=True),
        ConfigCase("no-model-source", "models.subject with neither path nor gguf", ["models.subject"],
                   _spec("subject", name="subject-x", dtype="float32", device="cpu"), real_run=True),
        ConfigCase("bad-device", "models.generator.device: gpu0", ["models.generator.device"], _with_base("generator", device="gpu0")),
        ConfigCase("bad-quantization", "models.subject.quantization: q3", ["models.subject.quantization"], _with_base("subject", quantization="q3")),
        ConfigCase("missing-local-model", "models.subject.path: ./no/such/model", ["models.subject.path"],
                   _spec("subject", name="local-x", path="./no/such/model")),
        ConfigCase("bad-run-name", "run: 'bad/name'", ["config key run"], _set("run", "bad/name")),
        ConfigCase("cli-nested-negative", "--config 'stories={per_topic: -3}'", ["stories.per_topic"], cli=["stories={per_topic: -3}"]),
        # Controls: must be accepted.
        ConfigCase("control-base", "the base config itself", [], accept=True),
        ConfigCase("control-cli-nested-number", "--config 'stories={per_topic: 3}' (a number, not the string '3')", [],
                   cli=["stories={per_topic: 3}"], accept=True),
    ]


def error_line(output: str) -> str:
    """The line of a Snakemake run's output that says what went wrong."""
    lines = [x.strip() for x in output.splitlines() if x.strip()]
    for x in lines:
        if "config key" in x or "Invalid configuration" in x:
            return x
    for a, b in zip(lines, lines[1:]):
        if a.rstrip(":").endswith("Error"):
            return b
    return lines[-1] if lines else ""
