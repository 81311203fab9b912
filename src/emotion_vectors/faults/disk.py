"""Fault 5: a full disk under an activation shard and a story shard (a small tmpfs, else a
loop-mounted ext4 image, else ``RLIMIT_FSIZE`` in the child)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .battery import Battery
from .common import ACT_NAME, STORY_EMOTION, _short, compare_activations, compare_stories


def full_disk(b: Battery, ref_act: Path, ref_story: Path) -> None:
    t0 = time.monotonic()
    d = b.work / "disk"
    d.mkdir(parents=True, exist_ok=True)
    with small_filesystem(d, rlimit_only=b.disk == "rlimit") as (mnt, method):
        b.log(f"full disk: using {method} at {mnt}")
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
        b.story_log(story_out).unlink(missing_ok=True)
        if not limited:
            fill(filler, leave=96 * 1024)  # room for a batch or two of the partial, not the shard
        act = b.run_child(b.extract_spec([act_out], fsize_limit=4096 if limited else None)).result(act_out)
        if not limited:
            fill(filler, leave=0)
        story = b.run_child(b.story_spec([story_out], fsize_limit=1024 if limited else None)).result(story_out)
        # Finished shards on the full filesystem must be intact.
        lost_fin, notes_fin = 0, []
        n_lost, note = compare_activations(finished / "afraid.zarr", ref_act)
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
        act2 = b.run_child(b.extract_spec([act_out])).result(act_out)
        story2 = b.run_child(b.story_spec([story_out])).result(story_out)
        act_lost, act_note = compare_activations(act_out, ref_act) if act2.get("ok") else (None, act2.get("error"))
        story_lost, story_note = compare_stories(story_out, ref_story) if story2.get("ok") else (None, story2.get("error"))
        b.details["full_disk"] = {
            "method": method,
            "activation_error": act_err, "activation_after_freeing": act_note,
            "activation_resumed_rows": (act2.get("summary") or {}).get("resumed_rows"),
            "story_error": story_err, "story_after_freeing": story_note,
            "finished_shards_intact": not lost_fin, "finished_notes": notes_fin,
        }
        b.log(f"full disk: activation error: {act_err}")
        b.log(f"full disk: story error: {story_err}")
        resumed_rows = (act2.get("summary") or {}).get("resumed_rows")
        freed = "rerun without the limit" if limited else "after freeing space"
        b.add(
            "full disk: activation shard write", 1, int(act_ok and act_lost == 0 and not lost_fin),
            f"{lost_fin} finished shards, {act_lost} rows",
            f"{method}; error: {_short(act_err)}; {freed}: resumed {resumed_rows} rows, {act_note}",
        )
        b.add(
            "full disk: story shard write", 1, int(story_ok and story_lost == 0 and not lost_fin),
            f"{lost_fin} finished shards, {story_lost} stories",
            f"error: {_short(story_err)}; {freed}: {story_note}; {time.monotonic() - t0:.0f} s for both",
        )


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
