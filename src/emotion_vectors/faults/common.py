"""What every family of the fault battery shares: paths, the shards under test and their corpus,
the default config and model, file corruptions, shard inspection, and the comparisons with the
uninterrupted run."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
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
    from ..core.config import validate_config

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
    from ..core.models import prepare_gguf_model

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


def _short(text: str, n: int = 220) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# --------------------------------------------------------------------------- comparisons


def compare_activations(path: Path, ref: Path) -> tuple[int, str]:
    """(rows that differ from the reference, note); a missing shard loses all rows."""
    from ..extraction.shards import open_shard

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
