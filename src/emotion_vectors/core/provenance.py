"""What produced an artifact: packages, machine, model, config.

Every artifact of the workflow carries ``provenance(...)`` in its attributes or JSON, so a
number in the report can be traced to the model (and revision), dtype, quantization, package
versions and config that made it.
"""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from .config import REPO_ROOT, config_hash

PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "accelerate",
    "bitsandbytes",
    "gguf",
    "snakemake",
    "zarr",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that can change a result (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """The project's git commit (with ``-dirty`` when files differ), if it is a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def provenance(
    *,
    stage: str,
    config_section: Any = None,
    model_info: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-able provenance record.

    Args:
        stage: which step made the artifact (e.g. ``"stories"``, ``"activations"``).
        config_section: the config values the step used; stored with its hash.
        model_info: ``LoadedModel.info`` of the model the step ran.
        extra: anything else worth keeping (seeds, counts).
    """
    import torch

    record: dict[str, Any] = {
        "stage": stage,
        "emotion_vectors_version": __version__,
        "git_commit": git_commit(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if config_section is not None:
        record["config"] = config_section
        record["config_hash"] = config_hash(config_section)
    if model_info is not None:
        record["model"] = model_info
    if extra:
        record.update(extra)
    return record
