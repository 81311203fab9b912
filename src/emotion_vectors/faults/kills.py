"""Faults 1 and 2: a real SIGKILL during an activation shard write and during a story shard
generation, at seeded kill points stratified over the stages of an uninterrupted run; every
killed shard is resumed by a fresh process and compared with the uninterrupted one."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

from .battery import Battery
from .children import ChildRun
from .common import ACT_SETTINGS, _remove, compare_activations, compare_stories, done_rows, partial_of, progress_of


def kill_plan(b: Battery, n_checkpoints: int) -> list[tuple[int, float]]:
    """``b.kills`` kill points ``(stage, fraction)``: stages 0..n_checkpoints spread
    evenly (stratified), each with a seeded random fraction of that stage's duration."""
    stages = n_checkpoints + 1
    return [
        (min(stages - 1, int((i + b.rng.random()) * stages / b.kills)), float(b.rng.random()))
        for i in range(b.kills)
    ]


def stage_windows(run: ChildRun, n: int) -> list[float]:
    """Duration of each stage of the reference run: until checkpoint 1, 1->2, ..., last->exit."""
    marks = [0.0, *run.checkpoints[:n], run.finished_at or run.ended_at]
    return [max(b - a, 0.02) for a, b in zip(marks, marks[1:])]


def kill_battery(
    b: Battery,
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
    ready_file = b.work / kind / "ref.ready"
    ref = b.run_child(
        spec_for([ref_out], ready_file), ready=ready_for(ref_out, ready_file), count=count_for(ref_out), finished=ref_out.exists
    )
    if not ref.result(ref_out).get("ok"):
        raise RuntimeError(f"uninterrupted {kind} run failed: {ref.result(ref_out)}")
    n_ckpt = len(ref.checkpoints)
    windows = stage_windows(ref, n_ckpt)
    b.log(f"{kind}: uninterrupted run: output complete {ref.finished_at or ref.ended_at:.1f} s after model load "
             f"(process ended at {ref.ended_at:.1f} s), {n_ckpt} checkpoints at {[round(x, 2) for x in ref.checkpoints]} s")
    plan = kill_plan(b, n_ckpt)
    records = []
    outs = []
    for i, (stage, frac) in enumerate(plan):
        out = ref_out.parent / f"kill{i:02d}{ref_out.suffix}"
        ready_file = b.work / kind / f"kill{i:02d}.ready"
        record = {"kill": i, "stage_planned": stage, "fraction": round(frac, 3), "attempts": 0}
        f = frac
        for attempt in range(4):
            record["attempts"] = attempt + 1
            _remove(out)
            _remove(partial_of(out))
            progress_of(out).unlink(missing_ok=True)
            ready_file.unlink(missing_ok=True)
            delay = f * windows[stage]
            run = b.run_child(
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
        b.log(f"{kind}: kill {i}: planned stage {stage} (+{frac:.2f} of it) -> {record['stage_hit']}")
        if record.get("rc") is not None:
            outs.append(out)
    resumed = b.run_child(resume_spec(outs)) if outs else None
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
    b.details[f"kill_{kind}"] = {"reference_seconds": round(ref.finished_at or ref.ended_at, 2), "checkpoints": n_ckpt, "kills": records}
    title = "SIGKILL during an activation shard write" if kind == "activations" else "SIGKILL during a story shard generation"
    b.add(
        title, injected, survived, f"{lost_total} {unit}",
        f"{len(stages_hit)} distinct stages hit ({'; '.join(stages_hit)}); resumed result "
        + ("bit-identical to the uninterrupted run" if kind == "activations" else "identical in content to the uninterrupted run")
        + f"; {time.monotonic() - t0:.0f} s",
    )


def kill_activations(b: Battery) -> Path:
    d = b.work / "activations"
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

    kill_battery(
        b, "activations", ref_out,
        spec_for=lambda outs, ready: b.extract_spec(outs, ready),
        ready_for=lambda out, ready: ready.exists,
        count_for=count_for,
        stage_of=stage_of,
        compare=compare_activations,
        resume_spec=lambda outs: b.extract_spec(outs),
        resumed_of=lambda out, res: f"{(res.get('summary') or {}).get('resumed_rows')} rows",
        unit="rows",
    )
    return ref_out


def kill_stories(b: Battery) -> Path:
    d = b.work / "stories"
    d.mkdir(parents=True, exist_ok=True)
    ref_out = d / "ref.json"

    def ready_for(out: Path, _ready: Path) -> Callable[[], bool]:
        log = b.story_log(out)

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
        text = b.story_log(out).read_text(errors="replace") if b.story_log(out).exists() else ""
        m = re.findall(r"resuming from checkpoint \((.*?)\)", text)
        return f"checkpoint ({m[-1]})" if m else "start (no checkpoint)"

    def prepare(outs: list[Path]) -> list[Path]:
        for out in outs:
            b.story_log(out).unlink(missing_ok=True)
        return outs

    kill_battery(
        b, "stories", ref_out,
        spec_for=lambda outs, ready: b.story_spec(prepare(outs)),
        ready_for=ready_for,
        count_for=count_for,
        stage_of=stage_of,
        compare=compare_stories,
        resume_spec=lambda outs: b.story_spec(outs),
        resumed_of=resumed_story,
        unit="stories",
    )
    return ref_out


def _stage_key(stage: str) -> tuple[int, str]:
    order = ["before", "after", "while", "after publishing", "after the shard"]
    m = re.search(r"after (\d+)/", stage) or re.search(r"round (\d+) batch (\d+)", stage)
    if stage.startswith("before"):
        return (0, stage)
    if m:
        return (1, f"{int(m.group(1)):04d}" + (f"{int(m.group(2)):04d}" if m.lastindex and m.lastindex > 1 else "") + stage)
    return (2 + next((i for i, o in enumerate(order) if stage.startswith(o)), 0), stage)
