"""The conditions of a behaviour experiment and the judge a config names.

:func:`build_conditions` turns the experiment's settings into the list the runner
(:func:`.run.run_scenario`) samples, each with the steers that make it:

- ``baseline``: no steering;
- for each emotion and magnitude ``m``: ``<emotion>+m`` and ``<emotion>-m``, the emotion's vector
  (``denoised_unit`` by default) added at one layer with strength ``±m`` in units of that
  layer's residual norm (:func:`emotion_vectors.steering.steer.steers_from_store`);
- for each random direction ``r`` and magnitude ``m``: ``random<r>+m``, a direction drawn
  uniformly on the unit sphere (:func:`emotion_vectors.steering.steer.random_steers`, seeded by
  ``derive_seed(seed, "behaviour-random", r)``, so direction ``r`` is the same at every
  magnitude), added with the same layer, unit and strength as the emotions' ``+m``: the same
  added norm, the null a real effect must leave.

Each :class:`Condition` has a JSON-able ``spec`` (what the runner records with every transcript
and compares on resume: ``name``, ``kind``, ``emotion``, ``strength``, ``random``,
``random_index``, ``layer``, ``unit_norm``, ``added_norm``, ``direction_sha256``) and its
``steers``. Because the spec carries the unit norm and a hash of the direction, transcripts made
with another vector store cannot be mixed into a resumed run.

:func:`make_judge` builds the classifier's stage 2 from a judge spec of the config: a model spec
like ``models.*`` (a local causal LM: :class:`.judging.LocalChoiceJudge`) or
``{backend: openai, name, base_url, model, api_key_env, ...}`` (:class:`.judging.ChatJudge`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...core.common import derive_seed, slug

BASELINE = "baseline"

#: Keys of a model spec that decide which weights are loaded, and how (two specs equal on these
#: are one model: a judge that is the subject reuses the subject's loaded copy).
MODEL_KEYS = ("name", "path", "gguf", "revision", "dtype", "device", "quantization", "compute_dtype", "double_quant")


@dataclass(frozen=True)
class Condition:
    """One condition: its JSON-able ``spec`` and the steers that make it (none for the baseline)."""

    spec: dict[str, Any]
    steers: tuple[Any, ...] = ()

    @property
    def name(self) -> str:
        return self.spec["name"]


def condition_name(label: str, strength: float) -> str:
    """``"desperate+0.05"``, ``"calm-0.1"``, ``"random0+0.2"`` (labels slugged: ``at_ease+0.1``)."""
    return f"{slug(label)}{strength:+g}"


def _direction_digest(steers: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for s in steers:
        h.update(str(s.layer).encode())
        h.update(np.ascontiguousarray(s.direction, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _spec(name: str, kind: str, emotion: str | None, strength: float, steers: Sequence[Any],
          random_index: int | None = None) -> dict[str, Any]:
    s = steers[0] if steers else None
    return {
        "name": name,
        "kind": kind,
        "emotion": emotion,
        "strength": float(strength),
        "random": kind == "random",
        "random_index": random_index,
        "layer": s.layer if s else None,
        "unit_norm": s.unit_norm if s else None,
        "added_norm": s.added_norm if s else 0.0,
        "direction_sha256": _direction_digest(steers) if steers else None,
    }


def resolve_layer(store: Any, layer: int | None) -> int:
    """The steered layer: ``layer`` if stored, ``None`` = the main layer
    (:func:`emotion_vectors.extraction.extract.main_stored_layer` of the store's layers and depth)."""
    from ...extraction.extract import main_stored_layer

    if layer is None:
        n_blocks = store.attrs.get("num_hidden_layers")
        n_blocks = int(n_blocks) if isinstance(n_blocks, (int, np.integer)) and n_blocks > 0 else None
        return main_stored_layer(store.layers, n_blocks)
    if layer not in store.layers:
        raise ValueError(f"behaviour.layer {layer} is not a stored layer of {store.path}: {store.layers}")
    return int(layer)


def check_emotions(store: Any, emotions: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the emotions that are not in the store (the run's emotions)."""
    missing = [e for e in emotions if e not in store.emotions]
    if missing:
        raise ValueError(
            f"behaviour.emotions {missing} are not among the run's emotions (the vector store "
            f"{store.path} has: {', '.join(store.emotions)}); add them to `emotions:` or choose "
            "others in `behaviour.emotions`"
        )


def build_conditions(
    store: Any,
    emotions: Sequence[str],
    magnitudes: Sequence[float],
    *,
    random_directions: int = 1,
    layer: int | None = None,
    seed: int = 0,
    kind: str = "denoised_unit",
) -> list[Condition]:
    """The baseline, each emotion at ``±m`` for every magnitude, and ``random_directions`` random
    directions at ``+m`` (see the module docstring), in that order.

    Args:
        store: a vector store directory or an opened ``store_layout.Store`` (with a measured
            residual norm: strengths are multiples of it).
        emotions: emotions of the store to steer with (an unknown one is a ``ValueError`` that
            names it and lists the store's).
        magnitudes: positive, finite, distinct strengths; both signs are run.
        random_directions: random directions per magnitude (0 = none).
        layer: the steered block (a stored layer); ``None`` = the main layer.
        seed: seeds the random directions.
        kind: the store's vector kind giving each emotion's direction.
    """
    from ..steer import random_steers, steers_from_store
    from ...vectors.store_layout import Store, read_store

    if not isinstance(store, Store):
        store = read_store(Path(store))
    emotions = list(emotions)
    if len(set(emotions)) != len(emotions):
        raise ValueError(f"behaviour.emotions repeats an emotion: {emotions}")
    check_emotions(store, emotions)
    mags = [float(m) for m in magnitudes]
    bad = [m for m in mags if not (math.isfinite(m) and m > 0)]
    if bad:
        raise ValueError(f"magnitudes must be finite and > 0 (both signs are run): {bad}")
    if len(set(mags)) != len(mags):
        raise ValueError(f"magnitudes repeat a value: {mags}")
    if random_directions < 0:
        raise ValueError(f"random_directions must be >= 0, not {random_directions}")
    layer = resolve_layer(store, layer)

    out = [Condition(_spec(BASELINE, "baseline", None, 0.0, []))]
    for emotion in emotions:
        for m in mags:
            for strength in (m, -m):
                steers = steers_from_store(store, emotion, [layer], strength, kind=kind)
                out.append(Condition(_spec(condition_name(emotion, strength), "emotion", emotion, strength, steers),
                                     tuple(steers)))
    like_emotion = emotions[0] if emotions else store.emotions[0]
    for r in range(random_directions):
        r_seed = derive_seed(seed, "behaviour-random", r)
        for m in mags:
            like = steers_from_store(store, like_emotion, [layer], m, kind=kind)
            steers = random_steers(like, r_seed)
            out.append(Condition(_spec(condition_name(f"random{r}", m), "random", None, m, steers, r), tuple(steers)))
    names = [c.name for c in out]
    if len(set(names)) != len(names):  # e.g. an emotion called "random0"
        raise ValueError(f"condition names are not unique: {names}")
    return out


# --- judges -----------------------------------------------------------------------------------


def same_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two model specs load the same weights the same way (:data:`MODEL_KEYS`)."""
    if a.get("backend", "hf") != "hf" or b.get("backend", "hf") != "hf":
        return False
    return all(a.get(k) == b.get(k) for k in MODEL_KEYS)


def describe_judge(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A judge spec as provenance records it (an API key's variable name, never its value)."""
    if spec.get("backend") == "openai":
        from ...corpus.backends import OPENAI_OPTIONS

        keys = ("backend", "name", "base_url", "model", *OPENAI_OPTIONS, "max_tokens")
        return {k: spec.get(k) for k in keys if k in spec}
    return {"backend": "hf", "kind": "local-choice", **{k: spec.get(k) for k in MODEL_KEYS if k in spec}}


def make_judge(
    spec: Mapping[str, Any],
    models_dir: str | Path = "results/models",
    *,
    evidence: str = "sent",
    loaded: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """The stage-2 judge a config spec names, and what provenance records of it.

    A model spec (``name`` and ``path`` or ``gguf``, ...): a :class:`.judging.LocalChoiceJudge`
    on that model, loaded with :func:`emotion_vectors.core.models.load_model` unless ``loaded`` (a
    ``LoadedModel`` of the same model, e.g. the subject) is given. ``{backend: openai, ...}``: a
    :class:`.judging.ChatJudge` on :class:`emotion_vectors.corpus.backends.OpenAIChatBackend`
    (``max_tokens`` from the spec, default 512).

    Returns ``(judge, info)``; ``info`` has ``spec`` (:func:`describe_judge`), ``judge`` (the
    judge's name) and, for a local model, ``model`` (``LoadedModel.info``).
    """
    from ...corpus.backends import make_backend
    from .judging import ChatJudge, LocalChoiceJudge

    info: dict[str, Any] = {"spec": describe_judge(spec)}
    if spec.get("backend") == "openai":
        backend_spec = {k: v for k, v in spec.items() if k not in ("name", "max_tokens")}
        judge: Any = ChatJudge(make_backend(backend_spec, models_dir), max_tokens=int(spec.get("max_tokens", 512)),
                               evidence=evidence)
    else:
        if loaded is None:
            from ...core.models import load_model

            loaded = load_model(dict(spec), models_dir)
        judge = LocalChoiceJudge(loaded.model, loaded.tokenizer, name=spec.get("name"), evidence=evidence)
        info["model"] = loaded.info
    info["judge"] = judge.name
    return judge, info
