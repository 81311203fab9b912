"""Export of steering vectors (emotion_vectors.steering.export): safetensors and llama.cpp GGUF.

Small stores are written with ``store_layout.write_store`` in ``tmp_path``; every export is read
back with the formats' own readers (``safetensors.safe_open`` / ``load_file``,
``gguf.GGUFReader``) and compared with ``strength x residual_norm[i] x unit vector`` computed
here from the vectors the store was built from.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emotion_vectors import __version__
from emotion_vectors.steering.export import (
    BLOCK_CONVENTION,
    ExportError,
    _atomic_write,
    default_layer,
    export_gguf,
    export_safetensors,
    steering_vectors,
)
from emotion_vectors.vectors.store_layout import write_store

REPO_ROOT = Path(__file__).resolve().parents[1]
EMOTIONS = ["joy", "fear", "calm"]
LAYERS = [0, 4, 9]
D = 16
RESIDUAL = np.array([1.5, 3.25, 7.0])
SUBJECT = {"name": "tiny-llama", "path": "/models/tiny", "revision": "abc123",
           "model_type": "llama", "dtype": "bfloat16", "quantization": "none"}


def _vectors(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(len(EMOTIONS), len(LAYERS), D)) * 3.0
    denoised = raw + rng.normal(size=raw.shape)
    return raw, denoised


def _store(path: Path, *, residual: np.ndarray | None = RESIDUAL, layers=LAYERS,
           denoised: np.ndarray | None = None) -> Path:
    raw, den = _vectors()
    if denoised is not None:
        den = denoised
    n_l = len(layers)
    return write_store(
        path, emotions=EMOTIONS, layers=layers, raw=raw[:, :n_l], denoised=den[:, :n_l],
        residual_norm=None if residual is None else residual[:n_l],
        n_neutral_pcs_removed=np.arange(n_l), n_stories=np.array([5, 6, 7]),
        attrs={"provenance": {"stage": "vectors", "subject_model": SUBJECT},
               "num_hidden_layers": 12, "pool_start": 50,
               "layer_convention": "layer i = output of decoder block i (0-based)"},
    )


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _expected(emotion: str, layer: int, strength: float, scale: float, kind="denoised"):
    raw, den = _vectors()
    src = den if kind == "denoised" else raw
    u = _unit(src[EMOTIONS.index(emotion), LAYERS.index(layer)])
    return strength * scale * u.astype(np.float64), u


def _rn(layer: int) -> float:
    return float(np.float32(RESIDUAL[LAYERS.index(layer)]))


def _gguf_fields(path: Path) -> tuple[dict, dict]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {name: f.contents() for name, f in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def _no_leftovers(directory: Path, expected: set[str]) -> None:
    assert {p.name for p in directory.iterdir()} == expected


# --- safetensors ----------------------------------------------------------------------------


def test_safetensors_tensors_values_and_metadata(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    store = _store(tmp_path / "v.zarr")
    out = export_safetensors(store, "fear", [9, 4], tmp_path / "fear.safetensors", strength=0.5)
    assert out == tmp_path / "fear.safetensors"
    tensors = load_file(str(out))
    assert set(tensors) == {"layer.4", "unit.4", "layer.9", "unit.9"}
    for layer in (4, 9):
        want_add, want_unit = _expected("fear", layer, 0.5, _rn(layer))
        add, unit = tensors[f"layer.{layer}"], tensors[f"unit.{layer}"]
        assert add.shape == unit.shape == (D,)
        assert add.dtype == unit.dtype == np.float32
        np.testing.assert_allclose(add, want_add, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(unit, want_unit, rtol=1e-6, atol=1e-7)
        assert math.isclose(float(np.linalg.norm(add)), 0.5 * _rn(layer), rel_tol=1e-5)

    with safe_open(str(out), framework="np") as f:
        raw_meta = f.metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in raw_meta.items())
    meta = {k: json.loads(v) for k, v in raw_meta.items()}
    assert meta["emotion"] == "fear"
    assert meta["kind"] == "denoised_unit"
    assert meta["layers"] == [4, 9]
    assert meta["strength"] == 0.5
    assert meta["strength_unit"] == "residual_norm[i]"
    assert meta["absolute_scale"] is None
    assert meta["residual_norm_status"] == "measured"
    assert meta["residual_norms"] == pytest.approx({"4": _rn(4), "9": _rn(9)})
    assert meta["scale"] == pytest.approx({"4": _rn(4), "9": _rn(9)})
    assert meta["block_convention"] == BLOCK_CONVENTION
    assert "decoder block i" in meta["hook_site"]
    assert meta["pool_start"] == 50
    assert meta["pooling"] is None  # not recorded in this store: not invented
    assert "unit L2 norm" in meta["normalisation"]
    assert meta["model"]["path"] == "/models/tiny"
    assert meta["model"]["revision"] == "abc123"
    assert meta["dtype"] == "bfloat16"
    assert meta["quantization"] == "none"
    assert meta["model"]["num_hidden_layers"] == 12
    assert meta["package_versions"]["emotion_vectors"] == __version__
    assert meta["store_provenance"]["subject_model"] == SUBJECT
    assert set(meta["tensors"]) == {"layer.{i}", "unit.{i}"}
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    _no_leftovers(tmp_path, {"v.zarr", "fear.safetensors"})


def test_default_layer_is_the_main_layer(tmp_path):
    from safetensors.numpy import load_file

    # the study's main layer (two-thirds of the depth) as the analysis picks it
    assert default_layer([4, 9, 14, 19, 24], 30) == 19  # SmolLM2: 30 blocks
    assert default_layer([4, 9, 14, 19, 24, 29, 34, 39, 44, 49, 54], 60) == 39  # Gemma 4 31B
    assert default_layer([4, 9, 14, 19, 24]) == 14  # blocks unknown: taken as 25, target 16
    assert default_layer([7]) == 7
    # the test store records 12 blocks: target round(8) - 1 = 7, nearest stored layer 9
    out = export_safetensors(_store(tmp_path / "v.zarr"), "joy", None, tmp_path / "joy.st")
    assert set(load_file(str(out))) == {"layer.9", "unit.9"}
    want, _ = _expected("joy", 9, 1.0, _rn(9))
    np.testing.assert_allclose(load_file(str(out))["layer.9"], want, rtol=1e-5, atol=1e-6)


def test_all_layers_and_raw_unit_kind(tmp_path):
    from safetensors.numpy import load_file

    store = _store(tmp_path / "v.zarr")
    out = export_safetensors(store, "calm", "all", tmp_path / "calm.st", kind="raw_unit",
                             strength=-2.0)
    tensors = load_file(str(out))
    assert set(tensors) == {f"{p}.{i}" for p in ("layer", "unit") for i in LAYERS}
    for layer in LAYERS:
        want, want_unit = _expected("calm", layer, -2.0, _rn(layer), kind="raw")
        np.testing.assert_allclose(tensors[f"layer.{layer}"], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tensors[f"unit.{layer}"], want_unit, rtol=1e-6, atol=1e-7)


# --- gguf -----------------------------------------------------------------------------------


def test_gguf_control_vector_layout_and_values(tmp_path):
    import gguf

    store = _store(tmp_path / "v.zarr")
    out = export_gguf(store, "joy", [4, 9], tmp_path / "joy.gguf", strength=0.75)
    fields, tensors = _gguf_fields(out)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama"
    assert fields["controlvector.layer_count"] == 2
    assert fields["emotion_vectors.emotion"] == "joy"
    assert fields["emotion_vectors.strength_unit"] == "residual_norm[i]"
    assert fields["emotion_vectors.strength"] == pytest.approx(0.75)
    meta = json.loads(fields["emotion_vectors.metadata"])
    assert meta["layers"] == [4, 9] and meta["model"]["path"] == "/models/tiny"
    assert set(tensors) == {"direction.4", "direction.9"}  # layer i -> direction.i
    for layer in (4, 9):
        t = tensors[f"direction.{layer}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == [D] and np.asarray(t.data).shape == (D,)
        data = np.asarray(t.data)
        assert data.dtype == np.float32
        want, _ = _expected("joy", layer, 0.75, _rn(layer))
        np.testing.assert_allclose(data, want, rtol=1e-5, atol=1e-6)
    _no_leftovers(tmp_path, {"v.zarr", "joy.gguf"})


def test_gguf_model_hint_override_and_layer_count_matches_tensors(tmp_path):
    store = _store(tmp_path / "v.zarr")
    out = export_gguf(store, "fear", [9], tmp_path / "f.gguf", model_hint="gemma3")
    fields, tensors = _gguf_fields(out)
    assert fields["controlvector.model_hint"] == "gemma3"
    assert fields["controlvector.layer_count"] == len(tensors) == 1


def test_gguf_refuses_layer_zero(tmp_path):
    store = _store(tmp_path / "v.zarr")
    for layers in ([0, 4], "all"):
        with pytest.raises(ExportError, match=r"layer 0 .*direction\.0"):
            export_gguf(store, "joy", layers, tmp_path / "x.gguf")
    # a store whose middle layer is 0 cannot use the default either
    store0 = _store(tmp_path / "v0.zarr", layers=[0])
    with pytest.raises(ExportError, match="layer 0"):
        export_gguf(store0, "joy", None, tmp_path / "x.gguf")
    _no_leftovers(tmp_path, {"v.zarr", "v0.zarr"})
    # safetensors has no such limit
    assert export_safetensors(store, "joy", [0], tmp_path / "x.st").exists()


# --- residual norm unknown ------------------------------------------------------------------


def test_unknown_residual_norm_refused_then_absolute_scale_accepted(tmp_path):
    from safetensors import safe_open

    store = _store(tmp_path / "v.zarr", residual=None)
    for export, name in ((export_safetensors, "u.st"), (export_gguf, "u.gguf")):
        with pytest.raises(ExportError,
                           match=r"residual_norm_status is 'unknown'.*--absolute-scale"):
            export(store, "joy", [4], tmp_path / name, strength=1.0)
    _no_leftovers(tmp_path, {"v.zarr"})

    st = export_safetensors(store, "joy", [4, 9], tmp_path / "u.st", strength=0.5,
                            absolute_scale=10.0)
    gg = export_gguf(store, "joy", [4, 9], tmp_path / "u.gguf", strength=0.5,
                     absolute_scale=10.0)
    _, tensors = _gguf_fields(gg)
    with safe_open(str(st), framework="np") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
        for layer in (4, 9):
            want, _ = _expected("joy", layer, 0.5, 10.0)
            np.testing.assert_allclose(f.get_tensor(f"layer.{layer}"), want, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(np.asarray(tensors[f"direction.{layer}"].data), want,
                                       rtol=1e-5, atol=1e-6)
    assert meta["strength_unit"] == "absolute"
    assert meta["absolute_scale"] == 10.0
    assert meta["residual_norm_status"] == "unknown"
    assert meta["residual_norms"] == {"4": None, "9": None}


# --- bad input: nothing written -------------------------------------------------------------


def test_unknown_emotion_layer_kind_and_numbers_write_nothing(tmp_path):
    store = _store(tmp_path / "v.zarr")
    existing = tmp_path / "keep.st"
    existing.write_bytes(b"previous export")
    for export in (export_safetensors, export_gguf):
        with pytest.raises(ExportError, match="stored emotions: joy, fear, calm"):
            export(store, "rage", [4], tmp_path / "o")
        with pytest.raises(ExportError,
                           match=r"\[5\] not in the store; stored layers: \[0, 4, 9\]"):
            export(store, "joy", [4, 5], tmp_path / "o")
        with pytest.raises(ExportError, match="kind"):
            export(store, "joy", [4], tmp_path / "o", kind="raw")
        with pytest.raises(ExportError, match="strength must be finite"):
            export(store, "joy", [4], tmp_path / "o", strength=float("nan"))
        with pytest.raises(ExportError, match="absolute_scale must be > 0"):
            export(store, "joy", [4], tmp_path / "o", absolute_scale=0.0)
        with pytest.raises(ExportError, match="does not exist"):
            export(tmp_path / "missing.zarr", "joy", [4], tmp_path / "o")
        with pytest.raises(ExportError, match="directory"):
            export(store, "joy", [4], tmp_path / "no_such_dir" / "o")
        # a refused export leaves an existing file at --out untouched
        with pytest.raises(ExportError):
            export(store, "rage", [4], existing)
    assert existing.read_bytes() == b"previous export"
    _no_leftovers(tmp_path, {"v.zarr", "keep.st"})


def test_zero_vector_is_refused(tmp_path):
    _, den = _vectors()
    den = den.copy()
    den[1, 1] = 0.0  # fear at layer 4: nothing to steer with
    store = _store(tmp_path / "v.zarr", denoised=den)
    with pytest.raises(ExportError, match="zero vector"):
        steering_vectors(store, "fear", [4])
    assert steering_vectors(store, "fear", [9]).layers == [9]


def test_failed_write_leaves_no_partial_file(tmp_path):
    out = tmp_path / "half.gguf"

    def write_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"GGUF partial header")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _atomic_write(out, write_then_fail)
    _no_leftovers(tmp_path, set())


# --- CLI ------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "emotion_vectors.steering.export", *args],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)


def test_cli_gguf_success_and_unknown_emotion_failure(tmp_path):
    store = _store(tmp_path / "v.zarr")
    out = tmp_path / "joy.gguf"
    ok = _cli(str(store), "--format", "gguf", "--emotion", "joy", "--layers", "4", "9",
              "--strength", "1", "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    assert f"wrote {out}" in ok.stdout and "layers [4, 9]" in ok.stdout
    fields, tensors = _gguf_fields(out)
    assert fields["general.architecture"] == "controlvector"
    assert set(tensors) == {"direction.4", "direction.9"}
    want, _ = _expected("joy", 9, 1.0, _rn(9))
    np.testing.assert_allclose(np.asarray(tensors["direction.9"].data), want, rtol=1e-5,
                               atol=1e-6)

    bad_out = tmp_path / "rage.safetensors"
    bad = _cli(str(store), "--format", "safetensors", "--emotion", "rage", "--out", str(bad_out))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1, bad.stderr
    assert "emotion 'rage' not in the store; stored emotions: joy, fear, calm" in lines[0]
    assert not bad_out.exists()
    _no_leftovers(tmp_path, {"v.zarr", "joy.gguf"})
