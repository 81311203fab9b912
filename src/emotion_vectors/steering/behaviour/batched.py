"""Sampling a scenario under every condition at once: one row per (condition, sample), many
conditions per forward pass.

:func:`run_scenario_rows` writes the same transcript records as :func:`.run.run_scenario` (one
JSON line each, checksummed, resumable), but draws them in **passes** of ``rows_per_pass`` rows
that mix conditions: row ``i`` of a pass carries its own condition's steers
(``steer.steering_rows``), and the scenario's prompt, shared by every row, runs once below the
steered block (``steer.generate_rows``). The scenario's prompt is long (the blackmail scenario is
~1,200 tokens), so the shared prefix is most of the work.

**Order and seeds.** The rows are listed sample-major (sample 0 of every condition in the
conditions' order, then sample 1, ...) and cut into passes of ``rows_per_pass``; pass ``b`` is
drawn with the seed ``derive_seed(seed, "behaviour", "rows", rows_per_pass, b)`` (recorded in each
line's ``seed``, with ``batch_size`` = ``rows_per_pass`` and the line's ``pass`` and ``row``).
Every row samples its own tokens (``torch.multinomial`` draws each row independently), so the
samples of two conditions are independent, as Fisher's tests against the baseline assume.

**Resume.** As :func:`.run.run_scenario`: intact lines are kept and their (condition, sample)
skipped; a kept line made with other settings (prompt, condition, token limit, temperature,
seed, rows per pass) raises :class:`.run.ResumeMismatch`. A pass with a missing row is drawn
again whole (the same seed and rows give the same draws) and only the missing rows are written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ...core.common import derive_seed
from .run import ResumeMismatch, _checksum, _ends_with_newline, _write_lines_atomic, read_transcripts
from .scenario import Scenario, prompt_digest, render_prompt


def pass_seed(seed: int, rows_per_pass: int, index: int) -> int:
    """The seed of pass ``index`` (see the module docstring)."""
    return derive_seed(seed, "behaviour", "rows", rows_per_pass, index)


def plan_passes(names: Sequence[str], n_samples: int, rows_per_pass: int) -> list[list[tuple[str, int]]]:
    """The passes: ``(condition, sample)`` rows, sample-major, ``rows_per_pass`` at a time."""
    rows = [(name, i) for i in range(n_samples) for name in names]
    return [rows[k : k + rows_per_pass] for k in range(0, len(rows), rows_per_pass)]


def run_scenario_rows(
    model: Any,
    tokenizer: Any,
    scenario: Scenario,
    conditions: Sequence[Mapping[str, Any]],
    steers: Mapping[str, Sequence[Any]],
    n_samples: int,
    seed: int,
    out_jsonl: str | Path,
    max_new_tokens: int,
    temperature: float,
    progress: Callable[[str], None] | None = None,
    *,
    rows_per_pass: int = 16,
    positions: str | int = "all",
    top_p: float = 1.0,
    model_name: str | None = None,
) -> list[dict[str, Any]]:
    """Generate ``n_samples`` responses per condition into ``out_jsonl`` (module docstring).

    Args:
        model, tokenizer: the subject (a causal LM and its tokenizer), called in process.
        conditions: dicts with at least a unique ``name`` (recorded whole with every line).
        steers: condition name -> its steers (none for the baseline).
        positions: the steering token policy (``"generated"``: the prompt is not steered).
        top_p: nucleus bound when sampling (1.0: the full distribution, as ``HFChatBackend``).

    Returns:
        The records of every (condition, sample), in condition then sample order.
    """
    import torch

    from ...corpus.backends import _eos_ids, has_chat_template
    from ..steer import generate_rows

    names = [c["name"] for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique: {names}")
    missing = [n for n in names if n not in steers]
    if missing:
        raise ValueError(f"no steers given for conditions {missing}")
    if n_samples < 0 or rows_per_pass < 1:
        raise ValueError(f"n_samples must be >= 0 and rows_per_pass >= 1, got {n_samples}, {rows_per_pass}")
    out = Path(out_jsonl)
    out.parent.mkdir(parents=True, exist_ok=True)
    prompt = render_prompt(tokenizer, scenario)
    p_hash = prompt_digest(prompt)
    ids = tokenizer(prompt, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    say = progress or (lambda msg: None)
    specs = {c["name"]: json.loads(json.dumps(dict(c))) for c in conditions}
    passes = plan_passes(names, n_samples, rows_per_pass)
    where = {key: (b, r) for b, rows in enumerate(passes) for r, key in enumerate(rows)}

    kept, dropped = read_transcripts(out, say)
    by_key: dict[tuple[str, int], dict] = {}
    for rec in kept:
        key = (rec.get("condition"), rec.get("sample"))
        if key in by_key:
            continue
        if key in where:
            expected = {"prompt_sha256": p_hash, "condition_spec": specs[key[0]], "max_new_tokens": max_new_tokens,
                        "temperature": temperature, "seed": pass_seed(seed, rows_per_pass, where[key][0]),
                        "batch_size": rows_per_pass}
            for fld, value in expected.items():
                if rec.get(fld) != value:
                    raise ResumeMismatch(
                        f"{out}: the transcript of condition {key[0]!r} sample {key[1]} was made with another "
                        f"{fld} ({rec.get(fld)!r}, now {value!r}); move the file aside to start over, or restore "
                        "the settings to resume")
        by_key[key] = rec
    if dropped or not _ends_with_newline(out):
        _write_lines_atomic(out, kept)
    if kept:
        say(f"resuming {out}: {len(kept)} transcripts kept, {dropped} incomplete line(s) dropped")

    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos))
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad}
    if temperature == 0:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kw.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=None)
    total = len(names) * n_samples
    done = sum(1 for key in where if key in by_key)
    with open(out, "a", encoding="utf-8") as fh:
        for b, rows in enumerate(passes):
            todo = [key for key in rows if key not in by_key]
            if not todo:
                continue
            s = pass_seed(seed, rows_per_pass, b)
            started = time.perf_counter()
            new = generate_rows(model, ids, [list(steers[name]) for name, _ in rows], positions=positions, seed=s, **kw)
            seconds = time.perf_counter() - started
            for r, (name, i) in enumerate(rows):
                if (name, i) in by_key:
                    continue
                toks = new[r].tolist()
                k = next((j for j, t in enumerate(toks) if t in eos), len(toks))
                rec: dict[str, Any] = {
                    "condition": name, "condition_spec": specs[name], "sample": i, "seed": s,
                    "batch_size": rows_per_pass, "pass": b, "row": r, "scenario": scenario.name,
                    "scenario_sha256": scenario.digest(), "prompt_sha256": p_hash, "max_new_tokens": max_new_tokens,
                    "temperature": temperature, "response": tokenizer.decode(toks[:k], skip_special_tokens=True),
                    "n_tokens": k, "prompt_tokens": len(ids), "finish_reason": "stop" if k < len(toks) else "length",
                    "model": model_name, "seed_honoured": True, "seconds": round(seconds / len(rows), 3),
                    "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                rec["sha256"] = _checksum(rec)
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                by_key[(name, i)] = rec
                done += 1
            say(f"pass {b + 1}/{len(passes)}: {len(todo)} transcripts ({len(rows)} rows) in {seconds:.1f} s "
                f"({done}/{total})")
            del new
            if torch.cuda.is_available():  # pragma: no cover - no GPU here
                torch.cuda.empty_cache()
    return [by_key[(n, i)] for n in names for i in range(n_samples)]


__all__ = ["pass_seed", "plan_passes", "run_scenario_rows"]
