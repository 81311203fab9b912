"""Fault 3: corrupted ``.partial`` activation shards and corrupted story checkpoints; each must be
detected and the affected rows recomputed (or the shard restarted), never used silently."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Callable

from .battery import Battery
from .common import (
    ACT_SETTINGS,
    _remove,
    compare_activations,
    compare_stories,
    done_rows,
    flip_byte,
    partial_of,
    progress_of,
    row_chunk,
    truncate_file,
    write_garbage,
)


def corrupt_partials(b: Battery, ref_out: Path) -> None:
    t0 = time.monotonic()
    d = b.work / "corrupt-activations"
    d.mkdir(parents=True, exist_ok=True)
    source = d / "source.zarr"
    ready = d / "source.ready"
    run = b.run_child(
        b.extract_spec([source], ready), ready=ready.exists,
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
    resumed = b.run_child(b.extract_spec(outs))
    survived, lost_total, records = 0, 0, []
    for (name, (what, _, keeps)), out in zip(cases.items(), outs):
        res = resumed.result(out)
        log = "\n".join(res.get("log", []))
        lost, note = compare_activations(out, ref_out) if res.get("ok") else (None, res.get("error"))
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
        b.log(f"corrupt partial {name}: reused {reused}/{len(done)} rows, {note}; {how or 'no message'}")
    b.details["corrupt_partials"] = records
    one_row = [r["case"] for r in records if r["reused_rows"] is not None and 0 < r["reused_rows"] == len(done) - 1]
    restart = [r["case"] for r in records if r["reused_rows"] == 0]
    logged = sum(1 for r in records if r["detected"])
    identical = sum(1 for r in records if r["result"] == "bit-identical")
    b.add(
        "corrupted activation .partial", len(cases), survived, f"{lost_total} rows",
        f"only the damaged row recomputed: {', '.join(one_row) or 'none'}; started over: {', '.join(restart) or 'none'}; "
        f"{logged}/{len(records)} reported in the log (a deleted done mask just reads as nothing done); "
        f"final shard bit-identical {identical}/{len(records)}; {time.monotonic() - t0:.0f} s",
    )


def corrupt_checkpoints(b: Battery, ref_out: Path) -> None:
    t0 = time.monotonic()
    d = b.work / "corrupt-stories"
    d.mkdir(parents=True, exist_ok=True)
    source = d / "source.json"
    b.story_log(source).unlink(missing_ok=True)
    seen: set[tuple[int, int]] = set()

    def count() -> int:
        with contextlib.suppress(OSError):
            st = progress_of(source).stat()
            seen.add((st.st_ino, st.st_mtime_ns))
        return len(seen)

    log = b.story_log(source)
    run = b.run_child(
        b.story_spec([source]), ready=lambda: log.exists() and "loaded in" in log.read_text(errors="replace"),
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
        b.story_log(out).unlink(missing_ok=True)
        outs.append(out)
    resumed = b.run_child(b.story_spec(outs))
    survived, lost_total, records = 0, 0, []
    for (name, (what, _)), out in zip(cases.items(), outs):
        res = resumed.result(out)
        log_text = b.story_log(out).read_text(errors="replace") if b.story_log(out).exists() else ""
        line = next((x for x in log_text.splitlines() if "checkpoint" in x and ("unusable" in x or "starting over" in x)), "")
        lost, note = compare_stories(out, ref_out) if res.get("ok") else (None, res.get("error"))
        ok = bool(res.get("ok")) and lost == 0 and bool(line) and "resuming from checkpoint" not in log_text
        survived += ok
        lost_total += lost or 0
        records.append({"case": name, "what": what, "ok": ok, "result": note, "log": line.strip() or "(not reported)"})
        b.log(f"corrupt checkpoint {name}: {note}; log: {line.strip() or 'NOT REPORTED'}")
    b.details["corrupt_checkpoints"] = records
    b.add(
        "corrupted story checkpoint", len(cases), survived, f"{lost_total} stories",
        "each detected (parse error or checksum mismatch), reported in the job log, shard restarted; "
        f"final shard identical in content; {time.monotonic() - t0:.0f} s",
    )
