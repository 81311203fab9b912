"""Small helpers every stage uses: stable seeds, file-safe names, atomic JSON writes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


ZARR_ENTRY = "zarr.json"


def zarr_root(path: str | Path) -> Path:
    """The directory of a Zarr store named by that directory or by its root metadata file
    (``<store>/zarr.json``). The workflow declares a store's ``zarr.json`` as the rule's output,
    not the directory: Snakemake keeps the time of a ``directory()`` output in a marker file
    inside it, which the store would then list as an unknown member."""
    p = Path(path)
    return p.parent if p.name == ZARR_ENTRY else p


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any parts (stable across runs and machines)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def slug(name: str) -> str:
    """File- and id-safe form of an emotion word: ``"at ease"`` -> ``"at_ease"``."""
    return name.strip().lower().replace(" ", "_")


def write_json_atomic(obj: Any, path: str | Path) -> None:
    """Write JSON beside ``path`` and rename it into place (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def write_jsonl_atomic(records: Any, path: str | Path) -> None:
    """Write one JSON object per line beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
