"""The vector-store layout: its one writer and reader (emotion_vectors.vectors.store_layout), and the
analysis's writers built on it (synthetic vectors, the published reference vectors)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from emotion_vectors.analysis.store import (
    REFERENCE_LAYER, load_vectors, store_from_reference_npz, write_vector_store,
)
from emotion_vectors.vectors.store_layout import (
    KINDS, LAYOUT_VERSION, StoreLayoutError, read_store, write_store,
)

from test_analysis_helpers import REFERENCE, reference_matrix

EMOTIONS = ["happy", "sad", "calm"]


def _vectors(seed: int = 0, shape=(3, 2, 5)) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape)
    x[1, 0] = 0.0  # a zero row stays zero in the unit copy
    return x


def test_write_and_read_a_measured_store(tmp_path):
    raw, den = _vectors(0), _vectors(1)
    path = write_store(
        tmp_path / "v.zarr", emotions=EMOTIONS, layers=[4, 9], raw=raw, denoised=den,
        residual_norm=np.array([12.5, 40.0]), n_neutral_pcs_removed=np.array([3, 5]),
        n_stories=np.array([10, 12, 11]), attrs={"provenance": {"subject_model": {"path": "m"}}},
    )
    st = read_store(path)
    assert st.emotions == EMOTIONS and st.layers == [4, 9] and st.kinds == list(KINDS)
    assert st.attrs["layout_version"] == LAYOUT_VERSION
    assert st.attrs["provenance"] == {"subject_model": {"path": "m"}}
    np.testing.assert_array_equal(st.array("raw")[:], raw.astype(np.float32))
    np.testing.assert_array_equal(st.array("denoised")[:], den.astype(np.float32))
    unit = st.array("raw_unit")[:]
    norms = np.linalg.norm(unit, axis=-1)
    np.testing.assert_allclose(norms[[0, 2]], 1.0, rtol=1e-6)
    assert norms[1, 0] == 0.0 and norms[1, 1] == pytest.approx(1.0)
    np.testing.assert_allclose(unit, raw / np.where(np.linalg.norm(raw, axis=-1, keepdims=True)
                                                    > 0, np.linalg.norm(raw, axis=-1,
                                                                        keepdims=True), 1),
                               rtol=1e-6)
    assert st.array("raw").chunks == (3, 1, 5)
    assert st.residual_norm_status == "measured"
    np.testing.assert_allclose(st.residual_norm, [12.5, 40.0])
    assert st.n_neutral_pcs_removed.tolist() == [3, 5] and st.n_stories.tolist() == [10, 12, 11]
    assert st.attrs["n_stories_status"] == "recorded"


def test_unknowns_are_stored_as_unknown_never_filled_in(tmp_path):
    den = _vectors(2)
    path = write_store(tmp_path / "v.zarr", emotions=EMOTIONS, layers=[4, 9], raw=None,
                       denoised=den, residual_norm=None, n_neutral_pcs_removed=None,
                       n_stories=None, attrs={})
    st = read_store(path)
    assert st.kinds == ["denoised", "denoised_unit"]  # no raw copied from denoised
    assert st.residual_norm_status == "unknown" and st.residual_norm is None
    group = zarr.open_group(str(path), mode="r")
    assert np.isnan(group["residual_norm"][:]).all()  # NaN, not a number someone made up
    assert "n_stories" not in set(group.array_keys())
    assert st.n_neutral_pcs_removed is None and st.n_stories is None
    assert group.attrs["n_neutral_pcs_removed_status"] == "unknown"
    with pytest.raises(StoreLayoutError, match="no array 'raw'"):
        st.array("raw")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"raw": None, "denoised": None}, "needs raw or denoised"),
        ({"residual_norm": np.array([1.0, np.nan])}, "finite"),
        ({"residual_norm": np.array([1.0, 0.0])}, "finite and > 0"),
        ({"residual_norm": np.array([1.0])}, "shape"),
        ({"n_stories": np.array([1, 2])}, "n_stories"),
        ({"n_neutral_pcs_removed": np.array([1.5, 2.0])}, "integers"),
        ({"attrs": {"layers": [1, 2]}}, "may not set"),
        ({"attrs": {"residual_norm_status": "measured"}}, "may not set"),
        ({"denoised": np.zeros((3, 2, 4))}, "one d"),
        ({"emotions": ["a", "a", "b"]}, "unique"),
    ],
)
def test_write_store_refuses_bad_input(tmp_path, kwargs, match):
    args = dict(emotions=EMOTIONS, layers=[4, 9], raw=_vectors(0), denoised=_vectors(1),
                residual_norm=np.array([1.0, 2.0]), n_neutral_pcs_removed=np.array([1, 2]),
                n_stories=np.array([1, 2, 3]), attrs={})
    args.update(kwargs)
    with pytest.raises(StoreLayoutError, match=match):
        write_store(tmp_path / "v.zarr", **args)


def test_read_store_checks_shapes_and_reads_old_stores(tmp_path):
    group = zarr.open_group(str(tmp_path / "old.zarr"), mode="w")
    group.create_array("raw", data=np.ones((3, 2, 4), dtype=np.float32))
    group.create_array("residual_norm", data=np.array([5.0, 6.0], dtype=np.float32))
    group.attrs.update({"emotions": EMOTIONS, "layers": [1, 2]})
    st = read_store(tmp_path / "old.zarr")  # no status attribute: a finite array is measured
    assert st.residual_norm_status == "measured" and st.residual_norm.tolist() == [5.0, 6.0]
    group.attrs["layers"] = [1, 2, 3]
    with pytest.raises(StoreLayoutError, match="does not match"):
        read_store(tmp_path / "old.zarr")
    with pytest.raises(StoreLayoutError, match="does not exist"):
        read_store(tmp_path / "missing.zarr")


def test_synthetic_store_has_no_invented_residual_norm(tmp_path):
    x = _vectors(3, (3, 2, 6)).astype(np.float32)
    vs = load_vectors(write_vector_store(tmp_path / "a.zarr", x, EMOTIONS, [1, 2]))
    assert vs.residual_norm is None and vs.residual_norm_status == "unknown"
    vs = load_vectors(write_vector_store(tmp_path / "b.zarr", x, EMOTIONS, [1, 2],
                                         residual_norm=np.array([3.0, 4.0])))
    assert vs.residual_norm.tolist() == [3.0, 4.0] and vs.residual_norm_status == "measured"


def test_reference_store_is_layer_39_with_unknown_units(tmp_path):
    """The replication's "layer 40" is hidden_states[40], the output of block 39 (0-based)."""
    emotions, x = reference_matrix()  # skips if absent
    assert REFERENCE_LAYER == 39
    vs = load_vectors(store_from_reference_npz(REFERENCE, tmp_path / "ref.zarr"))
    assert vs.layers == [39] and vs.emotions == emotions and vs.n_model_layers == 60
    assert vs.kinds == ["denoised", "denoised_unit"]
    np.testing.assert_array_equal(vs.layer("denoised", 39), x)
    assert vs.residual_norm is None and vs.n_neutral_pcs_removed is None
    assert "hidden_states[40]" in vs.provenance["source_layer_label"]
    assert "block 39" in vs.provenance["source_layer_label"]
