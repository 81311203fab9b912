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

The package, one module per family of faults: ``kills`` (1, 2), ``corruption`` (3), ``configs``
(4), ``disk`` (5), ``server`` with ``server_tools`` (6); ``battery`` holds the state they share
and runs their child processes (``children``); ``common`` the paths, corpus and helpers;
``report`` the table and details; ``cli`` the command line.
"""

from __future__ import annotations

from .battery import Battery
from .children import ChildRun, child_main
from .cli import SECTIONS, main
from .common import (
    ACT_NAME,
    ACT_SETTINGS,
    DEFAULT_CONFIG,
    MODELS_DIR,
    OUT_DIR,
    REPO_ROOT,
    STORIES_SCRIPT,
    STORY_EMOTION,
    STORY_OVERRIDES,
    STORY_TOPICS,
    activation_corpus,
    compare_activations,
    compare_stories,
    default_config,
    done_rows,
    ensure_default_model,
    flip_byte,
    partial_of,
    progress_of,
    row_chunk,
    story_content,
    subject_spec,
    truncate_file,
    validated_default,
    write_garbage,
)
from .configs import ConfigCase, config_cases, error_line
from .disk import fill, small_filesystem
from .report import details_markdown, table
from .server_tools import big_corpus, fill_listen_queue, trickle

__all__ = [
    "ACT_NAME", "ACT_SETTINGS", "DEFAULT_CONFIG", "MODELS_DIR", "OUT_DIR", "REPO_ROOT", "SECTIONS", "STORIES_SCRIPT",
    "STORY_EMOTION", "STORY_OVERRIDES", "STORY_TOPICS", "Battery", "ChildRun", "ConfigCase", "activation_corpus",
    "big_corpus", "child_main", "compare_activations", "compare_stories", "config_cases", "default_config",
    "details_markdown", "done_rows", "ensure_default_model", "error_line", "fill", "fill_listen_queue", "flip_byte",
    "main", "partial_of", "progress_of", "row_chunk", "small_filesystem", "story_content", "subject_spec", "table",
    "trickle", "truncate_file", "validated_default", "write_garbage",
]
