"""Sampling a scenario under each condition, resumably, one JSON line per transcript.

:func:`run_scenario` renders the scenario's prompt once, then for every condition and sample
index generates one response inside ``steer_for(condition)`` (a context manager that installs and
removes the condition's steering; :func:`contextlib.nullcontext` for none) and appends a line to
the output file. The runner reads nothing of a condition but its ``name``; the whole dict is
recorded.

**Seeds.** Drawn one at a time (``batch_size`` 1), sample ``i`` of condition ``c`` uses
``derive_seed(seed, "behaviour", c["name"], i)`` (:func:`emotion_vectors.core.common.derive_seed`:
the first 4 bytes of SHA-256 of the parts joined by ``|``, as a 31-bit integer): stable across
runs, machines and the order of conditions, and different across conditions, so that the
samples of two conditions are independent (as Fisher's test assumes) rather than paired.
Drawn in batches of ``B`` (``batch_size``; one ``generate`` call per batch, much faster), the
samples of batch ``b`` share the seed ``derive_seed(seed, "behaviour", name, "batch", B, b)``
(:func:`batch_seed`); each line records its ``seed`` and ``batch_size``.

**Lines.** Each line is a JSON object: ``condition`` (name), ``condition_spec`` (the dict),
``sample``, ``seed``, ``scenario``, ``scenario_sha256``, ``prompt_sha256``, ``max_new_tokens``,
``temperature``, ``response``, ``n_tokens``, ``prompt_tokens``, ``finish_reason``, ``model``,
``seed_honoured``, ``seconds`` (generation time), ``finished_at`` (UTC, ISO 8601), and
``sha256``: the SHA-256 of the canonical JSON of all the other fields.

**Resume.** On start, the lines already in ``out_jsonl`` that parse and pass their checksum are
kept and their (condition, sample) pairs skipped; a line that does not (the truncated last line of
a killed run) is dropped and reported, and the file is rewritten with the good lines before
anything is appended. A kept line made with other settings (prompt, condition dict,
``max_new_tokens``, ``temperature`` or seed) stops the run with an error naming the file and
the field: it would mix two experiments in one file. Once the job has written every output,
:func:`discard_resume_files` removes the resume file (and a ``.stale`` one moved aside), so that
nothing of the run is left beside its outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ContextManager, Protocol

from ...corpus.backends import Completion
from ...core.common import derive_seed
from .scenario import Scenario, prompt_digest, render_prompt


class GenerateFn(Protocol):
    """Continue a rendered prompt, e.g. :meth:`emotion_vectors.corpus.backends.HFChatBackend.generate_text`."""

    def __call__(self, prompt: str, *, max_tokens: int, temperature: float, seed: int | None) -> Completion:
        ...


class ResumeMismatch(ValueError):
    """An existing transcript file made with other settings."""


def sample_seed(seed: int, condition_name: str, sample: int) -> int:
    """The seed of one sample (see the module docstring)."""
    return derive_seed(seed, "behaviour", condition_name, sample)


def batch_seed(seed: int, condition_name: str, sample: int, batch_size: int) -> int:
    """The seed a sample was drawn with: :func:`sample_seed` when samples are drawn one at a
    time (``batch_size`` 1), else the seed of its batch (samples ``b*B … b*B+B-1`` of a
    condition are drawn together: ``derive_seed(seed, "behaviour", name, "batch", B, b)``)."""
    if batch_size <= 1:
        return sample_seed(seed, condition_name, sample)
    return derive_seed(seed, "behaviour", condition_name, "batch", batch_size, sample // batch_size)


class GenerateManyFn(Protocol):
    """``n`` continuations of a rendered prompt in one batch, e.g.
    :meth:`emotion_vectors.corpus.backends.HFChatBackend.generate_texts`."""

    def __call__(self, prompt: str, n: int, *, max_tokens: int, temperature: float,
                 seed: int | None) -> list[Completion]:
        ...


def _checksum(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def read_transcripts(path: str | Path, log: Callable[[str], None] | None = None) -> tuple[list[dict], int]:
    """The intact records of a transcript file, and how many lines were dropped (unparseable,
    not an object, or failing the checksum)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    good, dropped = [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                ok = isinstance(rec, dict) and rec.get("sha256") == _checksum(rec)
            except json.JSONDecodeError:
                ok = False
            if ok:
                good.append(rec)
            else:
                dropped += 1
                if log:
                    log(f"{path}:{lineno}: dropping an incomplete or altered line")
    return good, dropped


def _ends_with_newline(path: Path) -> bool:
    """True for a missing or empty file, or one whose last byte is a newline."""
    if not path.exists() or path.stat().st_size == 0:
        return True
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _write_lines_atomic(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def run_scenario(
    backend_generate: GenerateFn,
    tokenizer: Any,
    scenario: Scenario,
    conditions: Sequence[Mapping[str, Any]],
    n_samples: int,
    seed: int,
    steer_for: Callable[[Mapping[str, Any]], ContextManager[Any]],
    out_jsonl: str | Path,
    max_new_tokens: int,
    temperature: float,
    progress: Callable[[str], None] | None = None,
    *,
    batch_size: int = 1,
    generate_many: GenerateManyFn | None = None,
) -> list[dict[str, Any]]:
    """Generate ``n_samples`` responses per condition into ``out_jsonl`` (see the module docstring).

    Args:
        backend_generate: continues the rendered prompt (``prompt, *, max_tokens, temperature,
            seed -> Completion``), e.g. ``HFChatBackend(model, tok).generate_text``.
        tokenizer: renders the prompt (:func:`~.scenario.render_prompt`).
        conditions: dicts with at least a unique ``name`` (e.g. ``{name, emotion, strength,
            random}``), in the order to run them.
        steer_for: ``condition -> context manager``; entered once per condition around its
            missing samples.
        progress: called with a short message after each transcript and on resume.
        batch_size: samples of a condition drawn together in one batch by ``generate_many``
            (one seed per batch, :func:`batch_seed`); 1 = one at a time by
            ``backend_generate``. Part of the experiment's identity: a file made with another
            batch size is not resumed. A batch with a missing sample is drawn again whole and
            only the missing samples are written (the others are the same draws).

    Returns:
        The records of every (condition, sample) asked for, in condition then sample order
        (kept ones included).
    """
    names = [c["name"] for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique: {names}")
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, not {n_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    if batch_size > 1 and generate_many is None:
        raise ValueError("batch_size > 1 needs generate_many (e.g. HFChatBackend.generate_texts)")
    out = Path(out_jsonl)
    out.parent.mkdir(parents=True, exist_ok=True)
    prompt = render_prompt(tokenizer, scenario)
    p_hash = prompt_digest(prompt)
    say = progress or (lambda msg: None)

    kept, dropped = read_transcripts(out, say)
    specs = {c["name"]: json.loads(json.dumps(dict(c))) for c in conditions}
    by_key = _kept_by_key(out, kept, specs, p_hash=p_hash, max_new_tokens=max_new_tokens, temperature=temperature,
                          seed=seed, batch_size=batch_size)
    if dropped or not _ends_with_newline(out):
        _write_lines_atomic(out, kept)
    if kept:
        say(f"resuming {out}: {len(kept)} transcripts kept, {dropped} incomplete line(s) dropped")

    total = len(conditions) * n_samples
    done = sum(1 for c in conditions for i in range(n_samples) if (c["name"], i) in by_key)
    with open(out, "a", encoding="utf-8") as fh:
        for cond in conditions:
            name = cond["name"]
            todo = [i for i in range(n_samples) if (name, i) not in by_key]
            if not todo:
                continue
            batches: dict[int, list[int]] = {}
            for i in todo:
                batches.setdefault(i // batch_size, []).append(i)
            with steer_for(cond):
                for b, missing in batches.items():
                    members = list(range(b * batch_size, min(n_samples, (b + 1) * batch_size)))
                    s = batch_seed(seed, name, members[0], batch_size)
                    started = time.perf_counter()
                    if batch_size == 1:
                        comps = [backend_generate(prompt, max_tokens=max_new_tokens, temperature=temperature, seed=s)]
                    else:
                        comps = generate_many(prompt, len(members), max_tokens=max_new_tokens,
                                              temperature=temperature, seed=s)
                    seconds = time.perf_counter() - started
                    for i in missing:
                        comp = comps[members.index(i)]
                        rec = _transcript_record(name, specs[name], i, s, comp, scenario=scenario, p_hash=p_hash,
                                                 batch_size=batch_size, max_new_tokens=max_new_tokens,
                                                 temperature=temperature, seconds=round(seconds / len(members), 3))
                        fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                        fh.flush()
                        os.fsync(fh.fileno())
                        by_key[(name, i)] = rec
                        done += 1
                        say(f"{name} sample {i}: {comp.completion_tokens} tokens in {rec['seconds']:.1f} s ({done}/{total})")
    return [by_key[(c["name"], i)] for c in conditions for i in range(n_samples)]


def _kept_by_key(out: Path, kept: Sequence[dict[str, Any]], specs: Mapping[str, Any], *, p_hash: str,
                 max_new_tokens: int, temperature: float, seed: int,
                 batch_size: int) -> dict[tuple[str, int], dict]:
    """The kept transcripts by (condition, sample), the first of each; :class:`ResumeMismatch` when
    one of a condition asked for was made with other settings (prompt, condition, token limit,
    temperature, seed, batch size)."""
    by_key: dict[tuple[str, int], dict] = {}
    for rec in kept:
        key = (rec.get("condition"), rec.get("sample"))
        if key in by_key:
            continue
        if key[0] in specs and isinstance(key[1], int):
            expected = {
                "prompt_sha256": p_hash,
                "condition_spec": specs[key[0]],
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "seed": batch_seed(seed, key[0], key[1], batch_size),
                "batch_size": batch_size,
            }
            for field, value in expected.items():
                if rec.get(field) != value:
                    raise ResumeMismatch(
                        f"{out}: the transcript of condition {key[0]!r} sample {key[1]} was made with "
                        f"another {field} ({rec.get(field)!r}, now {value!r}); move the file aside to "
                        "start over, or restore the settings to resume"
                    )
        by_key[key] = rec
    return by_key


def _transcript_record(name: str, spec: Any, i: int, s: int, comp: Any, *, scenario: Scenario, p_hash: str,
                       batch_size: int, max_new_tokens: int, temperature: float, seconds: float) -> dict[str, Any]:
    """One transcript's record (sample ``i`` of condition ``name``, drawn with seed ``s``), with its
    checksum."""
    rec: dict[str, Any] = {
        "condition": name,
        "condition_spec": spec,
        "sample": i,
        "seed": s,
        "batch_size": batch_size,
        "scenario": scenario.name,
        "scenario_sha256": scenario.digest(),
        "prompt_sha256": p_hash,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "response": comp.text,
        "n_tokens": comp.completion_tokens,
        "prompt_tokens": comp.prompt_tokens,
        "finish_reason": comp.finish_reason,
        "model": comp.model,
        "seed_honoured": comp.seed_honoured,
        "seconds": seconds,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    rec["sha256"] = _checksum(rec)
    return rec


def discard_resume_files(out_jsonl: str | Path) -> list[Path]:
    """Remove the resume files of a finished run: ``out_jsonl`` (the ``transcripts.jsonl.partial``
    that :func:`run_scenario` appended to) and ``<out_jsonl>.stale`` (one made with other settings,
    moved aside), so that only the outputs are left beside the outputs. Call it when the job has
    written all its outputs: until then the partial is what a rerun resumes from. Returns the
    files removed.
    """
    out = Path(out_jsonl)
    removed = []
    for path in (out, out.with_name(out.name + ".stale")):
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(path)
    return removed


def no_steering(condition: Mapping[str, Any]) -> ContextManager[None]:
    """A ``steer_for`` that steers nothing (for baselines and tests)."""
    return contextlib.nullcontext()


def classify_transcripts(records: Sequence[Mapping[str, Any]], scenario: Scenario, judge: Any) -> list[dict[str, Any]]:
    """Each transcript's condition, sample and seed with its two-stage classification
    (:func:`.judging.classify_many`)."""
    from .judging import classify_many

    results = classify_many([r["response"] for r in records], scenario, judge)
    return [
        {"condition": r["condition"], "sample": r["sample"], "seed": r["seed"], **res}
        for r, res in zip(records, results)
    ]


def check_transcripts(records: Sequence[Mapping[str, Any]], scenario: Scenario) -> list[dict[str, Any]]:
    """Stage 1 only (no judge: none was validated): each transcript's condition, sample and seed
    with :func:`.checks.check_response`'s fields, ``judge_called`` False, the judge fields
    ``None`` and ``label`` ``None`` (not classified: these records give no blackmail rate)."""
    from .checks import check_response

    out = []
    for r in records:
        rec = {"condition": r["condition"], "sample": r["sample"], "seed": r["seed"],
               **check_response(r["response"], scenario)}
        rec.update(judge_called=False, judge=None, judge_label=None, judge_score=None, judge_raw=None, label=None)
        out.append(rec)
    return out
