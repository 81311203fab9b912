"""Each step of ``shards.write_shard`` on its own: plan (fingerprint), resume (what a partial
may and may not be reused for), write (rows, checksums, attributes, errors) and publish.

``tests/test_shards.py`` checks the whole write against an uninterrupted one and after a real
SIGKILL; ``tests/test_faults.py`` corrupts partials. These pin the rest, found by mutation
testing (``make mutants``): every attribute and summary field, every log line a resume writes,
the checksum's definition, the float16 guard's message, OSError reporting, the staged publish.
"""

import hashlib
import shutil
import types

import numpy as np
import pytest
import zarr

from emotion_vectors.extraction import shards
from emotion_vectors.extraction.shards import (
    LAYER_CONVENTION,
    PARTIAL_FORMAT,
    ShardError,
    fingerprint,
    open_shard,
    write_shard,
)

SETTINGS = {"pool_start": 4, "short_text_policy": "skip", "batch_size": 2, "max_batch_tokens": None, "storage_dtype": "float32"}
INFO = {"path": "tiny-llama", "revision": "test", "dtype": "float32", "quantization": "none"}
LAYERS = [1, 3]


def _corpus(n=6, short=()):
    words = "the fence rain letter garden window quiet road light morning neighbor paint".split()
    texts = [" ".join(words[(i + k) % len(words)] for k in range(6 + i)) for i in range(n)]
    for i in short:
        texts[i] = "the"
    return texts, [f"calm-{i:02d}" for i in range(n)]


def _write(model, tok, out, texts=None, ids=None, settings=SETTINGS, **kwargs):
    if texts is None:
        texts, ids = _corpus()
    logs = []
    summary = write_shard(model, tok, texts, ids, LAYERS, out, settings, name="calm", model_info=INFO, log=logs.append, **kwargs)
    return summary, logs


def test_fingerprint_covers_exactly_what_determines_the_numbers():
    texts, ids = ["a b c", "d e f"], ["x", "y"]
    base = fingerprint(texts, ids, [1, 3], SETTINGS, INFO)
    assert len(base) == 24 and int(base, 16) >= 0
    h = hashlib.sha256()
    for part in (ids, texts, [1, 3], SETTINGS, {k: INFO.get(k) for k in ("path", "revision", "dtype", "quantization")}):
        h.update(__import__("json").dumps(part, sort_keys=True, default=str).encode())
    assert base == h.hexdigest()[:24]
    changed = [
        fingerprint(["a b c", "d e g"], ids, [1, 3], SETTINGS, INFO),
        fingerprint(texts, ["x", "z"], [1, 3], SETTINGS, INFO),
        fingerprint(texts, ids, [1, 2], SETTINGS, INFO),
        fingerprint(texts, ids, [1, 3], dict(SETTINGS, pool_start=5), INFO),
    ] + [fingerprint(texts, ids, [1, 3], SETTINGS, dict(INFO, **{k: "other"})) for k in ("path", "revision", "dtype", "quantization")]
    assert len(set(changed) | {base}) == 9
    # what the model info says besides those four (e.g. a load time) does not matter
    assert fingerprint(texts, ids, [1, 3], SETTINGS, dict(INFO, load_seconds=3.2)) == base


def test_row_checksum_is_blake2b_of_the_stored_row():
    acts = np.arange(6, dtype=np.float32).reshape(2, 3)
    norm = np.array([1.5, 2.5], dtype=np.float32)
    h = hashlib.blake2b(digest_size=8)
    h.update(acts.astype("<f4").tobytes())
    h.update(norm.astype("<f4").tobytes())
    h.update(np.asarray(7, dtype="<i8").tobytes())
    assert shards._row_checksum(acts, norm, 7) == int.from_bytes(h.digest(), "little")
    assert shards._row_checksum(acts.astype(np.float64), norm, np.int64(7)) == shards._row_checksum(acts, norm, 7)
    others = {shards._row_checksum(acts + 1, norm, 7), shards._row_checksum(acts, norm + 1, 7), shards._row_checksum(acts, norm, 8)}
    assert shards._row_checksum(acts, norm, 7) not in others and len(others) == 3


def test_float16_guard_names_the_text_layer_and_fix():
    values = np.zeros((3, 2, 4), dtype=np.float32)
    values[2, 1, 3] = -7e4  # the third text, the second layer
    with pytest.raises(ShardError) as err:
        shards._check_storage(values, "float16", ["a", "b", "c"], [5, 9], "calm")
    assert str(err.value) == (
        "calm: text 'c' at layer 9 has |value| up to 7e+04, beyond float16's 65504; "
        "set extraction.storage_dtype: float32"
    )
    shards._check_storage(values, "float32", ["a", "b", "c"], [5, 9], "calm")  # float32 holds it
    values[2, 1, 3] = 65504.0  # float16's largest value: allowed
    shards._check_storage(values, "float16", ["a", "b", "c"], [5, 9], "calm")


def test_shard_attributes_summary_and_logs(tmp_path, tiny_llama):
    model, tok = tiny_llama
    texts, ids = _corpus(7, short=(2,))
    out = tmp_path / "s.zarr"
    summary, logs = _write(model, tok, out, texts, ids, attrs={"provenance": {"stage": "t"}})
    shard = open_shard(out)
    n_tok = [len(tok(t)["input_ids"]) for t in texts]
    kept = [i for i in range(7) if n_tok[i] > 4]
    assert kept == [0, 1, 3, 4, 5, 6]
    assert {k: v for k, v in summary.items() if k not in ("seconds", "tokens_per_second")} == {
        "name": "calm", "n_texts": 7, "n_kept": 6, "n_skipped": 1, "resumed_rows": 0,
        "tokens_extracted": sum(n_tok[i] for i in kept),
    }
    assert summary["seconds"] >= 0 and summary["tokens_per_second"] == pytest.approx(
        summary["tokens_extracted"] / max(summary["seconds"], 1e-9), rel=0.01, abs=0.1)
    attrs = dict(shard.attrs)
    assert attrs == {
        "name": "calm",
        "ids": [ids[i] for i in kept],
        "skipped": [{"id": "calm-02", "n_tokens": n_tok[2]}],
        "layers": LAYERS,
        "layer_convention": LAYER_CONVENTION,
        "pool_start": 4,
        "pooling": "mean over token positions [pool_start, n_tokens) of each text, counted from its own first token (add_special_tokens=True)",
        "short_text_policy": "skip",
        "storage_dtype": "float32",
        "hidden_size": model.config.hidden_size,
        "fingerprint": fingerprint(texts, ids, LAYERS, SETTINGS, INFO),
        "model": INFO,
        "summary": summary,
        "provenance": {"stage": "t"},
        "complete": True,
    }
    assert shard["activations"].dtype == np.float32 and shard["activations"].chunks == (6, 2, model.config.hidden_size)
    assert shard["token_norm"].chunks == (6, 2) and shard["n_tokens"].chunks == (6,)
    assert shard["token_norm"].dtype == np.float32 and shard["n_tokens"].dtype == np.int64  # the documented layout
    np.testing.assert_array_equal(shard["n_tokens"][:], [n_tok[i] for i in kept])
    # the last progress line counts every kept text; no resume was logged
    assert logs[-1].startswith("calm: 6/6 texts, ") and logs[-1].endswith(" tokens/s")
    assert not any("resum" in line for line in logs)
    assert not (tmp_path / "s.zarr.partial").exists() and not (tmp_path / "s.zarr.tmp").exists()


def test_float16_shard_and_chunking_of_many_rows(tmp_path, tiny_llama):
    model, tok = tiny_llama
    texts, ids = _corpus(70)
    summary, _ = _write(model, tok, tmp_path / "h.zarr", texts, ids, settings=dict(SETTINGS, storage_dtype="float16", batch_size=35))
    shard = open_shard(tmp_path / "h.zarr")
    assert shard["activations"].dtype == np.float16 and shard.attrs["storage_dtype"] == "float16"
    assert shard["activations"].chunks == (64, 2, model.config.hidden_size)  # at most 64 rows a chunk
    assert summary["n_kept"] == 70


def test_partial_while_filling_and_a_clean_resume(tmp_path, tiny_llama):
    """The partial holds one row per chunk, a checksum and the done mask; a resume logs how many
    verified rows it reuses and recomputes nothing else."""
    from emotion_vectors.core.models import decoder_layers

    model, tok = tiny_llama
    out = tmp_path / "r.zarr"
    calls = []

    def crash(module, args):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("killed")

    handle = decoder_layers(model)[0].register_forward_pre_hook(crash)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            _write(model, tok, out)
    finally:
        handle.remove()
    partial = zarr.open_group(str(tmp_path / "r.zarr.partial"), mode="r")
    assert partial.attrs["partial_format"] == PARTIAL_FORMAT == 2
    assert partial.attrs["fingerprint"] == fingerprint(*_corpus(), LAYERS, SETTINGS, INFO)
    assert partial["activations"].chunks == (1, 2, model.config.hidden_size)
    done = partial["done"][:]
    assert done.sum() == 4 and partial["row_checksum"].dtype == np.uint64
    for r in np.flatnonzero(done):
        assert int(partial["row_checksum"][r]) == shards._row_checksum(
            partial["activations"][r], partial["token_norm"][r], partial["n_tokens"][r])
    summary, logs = _write(model, tok, out)
    assert summary["resumed_rows"] == 4
    assert "calm: resuming, 4/6 texts already extracted (rows verified)" in logs
    assert logs[-1].startswith("calm: 6/6 texts, ")  # progress counts resumed rows too
    fresh, _ = _write(model, tok, tmp_path / "f.zarr")
    np.testing.assert_array_equal(open_shard(out)["activations"][:], open_shard(tmp_path / "f.zarr")["activations"][:])


def _interrupted(model, tok, out, texts=None, ids=None, after=2):
    """Write ``out`` and crash in the forward pass after ``after`` batches."""
    from emotion_vectors.core.models import decoder_layers

    calls = []

    def crash(module, args):
        calls.append(1)
        if len(calls) > after:
            raise RuntimeError("killed")

    handle = decoder_layers(model)[0].register_forward_pre_hook(crash)
    try:
        with pytest.raises(RuntimeError):
            _write(model, tok, out, texts, ids)
    finally:
        handle.remove()


def test_partials_that_are_not_reused(tmp_path, tiny_llama):
    model, tok = tiny_llama
    texts, ids = _corpus()
    cases = {
        "other texts": lambda p: None,
        "older layout": lambda p: p.attrs.update({"partial_format": 1}),
        "wrong shape": lambda p: p.create_array("done", shape=(5,), dtype="bool", overwrite=True),
    }
    for name, edit in cases.items():
        out = tmp_path / f"{name.replace(' ', '-')}.zarr"
        _interrupted(model, tok, out)
        edit(zarr.open_group(str(shards.Path(str(out) + ".partial")), mode="r+"))
        run_texts = list(texts)
        if name == "other texts":
            run_texts[0] = run_texts[0] + " changed"
        summary, logs = _write(model, tok, out, run_texts, ids)
        assert summary["resumed_rows"] == 0, name
        partial = f"calm: partial shard {out}.partial"
        expected = {
            "other texts": f"{partial} was made with other texts or settings; starting over",
            "older layout": f"{partial} has an older layout (no row checksums); starting over",
            "wrong shape": f"{partial} unreadable (ShardError: array 'done' has shape (5,), expected (6,)); starting over",
        }[name]
        assert expected in logs, (name, logs)


def test_many_bad_rows_are_listed_five_at_most(tmp_path, tiny_llama):
    model, tok = tiny_llama
    texts, ids = _corpus(12)
    out = tmp_path / "b.zarr"
    _write(model, tok, out, texts, ids)
    # a partial of a finished shard: rebuild one with every row done, then spoil 6 checksums
    src = tmp_path / "keep.zarr"
    _write(model, tok, src, texts, ids, staged=tmp_path / "staged.zarr")
    partial = zarr.open_group(str(tmp_path / "keep.zarr.partial"), mode="r+")
    checks = partial["row_checksum"][:]
    checks[:6] ^= np.uint64(1)
    partial["row_checksum"][:] = checks
    summary, logs = _write(model, tok, src, texts, ids)
    assert summary["resumed_rows"] == 6
    shown = ", ".join(ids[:5])  # rows follow the kept texts' order
    assert (f"calm: partial shard {src}.partial: 6 finished row(s) failed the integrity check "
            f"(unreadable or checksum mismatch: {shown}, ...); recomputing them") in logs
    assert "calm: resuming, 6/12 texts already extracted (rows verified)" in logs


def test_staged_publish_keeps_the_partial_and_replaces_what_is_there(tmp_path, tiny_llama):
    model, tok = tiny_llama
    out, staged = tmp_path / "o.zarr", tmp_path / "o.zarr.staged-1"
    staged.mkdir()
    (staged / "stale").write_text("x")  # a stale staged copy is replaced
    summary, _ = _write(model, tok, out, staged=staged)
    assert not out.exists() and open_shard(staged).attrs["complete"]
    assert not (staged / "stale").exists()
    partial = zarr.open_group(str(tmp_path / "o.zarr.partial"), mode="r")
    assert partial["done"][:].all()  # a rerun would resume every row
    # a symlink in the way is removed, not followed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("x")
    link = tmp_path / "l.zarr"
    link.symlink_to(elsewhere, target_is_directory=True)
    _write(model, tok, link)
    assert not link.is_symlink() and open_shard(link).attrs["complete"]
    assert (elsewhere / "keep").exists()
    # an old directory at the output path is replaced, the partial and tmp are gone
    old = tmp_path / "d.zarr"
    old.mkdir()
    (old / "junk").write_text("x")
    _write(model, tok, old)
    assert not (old / "junk").exists() and open_shard(old).attrs["complete"]
    assert not (tmp_path / "d.zarr.partial").exists() and not (tmp_path / "d.zarr.tmp").exists()


def test_os_errors_name_the_shard_and_the_rows_kept(tmp_path, tiny_llama):
    model, tok = tiny_llama
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = blocker / "s.zarr"
    with pytest.raises(ShardError) as err:
        _write(model, tok, out)
    msg = str(err.value)
    assert msg.startswith(f"shard 'calm' ({out}): cannot write: ")
    assert msg.endswith("nothing was published under that path; fix the cause (e.g. free space) and "
                        "rerun: the rows already extracted are kept in its .partial and resumed")
    assert isinstance(err.value.__cause__, OSError)


def test_missing_rows_and_extraction_errors_are_shard_errors(tmp_path, tiny_llama, monkeypatch):
    from emotion_vectors.extraction.extract import ShortTextError

    model, tok = tiny_llama
    texts, ids = _corpus(short=(1,))
    # The "error" policy stops at the plan, before any partial is made.
    with pytest.raises(ShortTextError, match="calm-01"):
        _write(model, tok, tmp_path / "e.zarr", texts, ids, settings=dict(SETTINGS, short_text_policy="error"))
    assert not (tmp_path / "e.zarr.partial").exists()
    monkeypatch.setattr(shards, "iter_pooled", lambda *a, **k: iter(()))  # an extractor that yields nothing
    with pytest.raises(ShardError, match=r"^calm: extraction ended with 6 texts missing$"):
        _write(model, tok, tmp_path / "m.zarr")
    assert not (tmp_path / "m.zarr").exists()


def test_a_shard_with_no_kept_text(tmp_path, tiny_llama):
    model, tok = tiny_llama
    texts, ids = _corpus(3, short=(0, 1, 2))
    summary, _ = _write(model, tok, tmp_path / "z.zarr", texts, ids)
    shard = open_shard(tmp_path / "z.zarr")
    assert shard["activations"].shape == (0, 2, model.config.hidden_size)
    assert shard["token_norm"].shape == (0, 2) and shard["n_tokens"].shape == (0,)
    assert summary["n_kept"] == 0 and summary["n_skipped"] == 3 and summary["tokens_extracted"] == 0
    # and its partial resumes as empty
    _write(model, tok, tmp_path / "z2.zarr", texts, ids, staged=tmp_path / "z2.staged")
    again, logs = _write(model, tok, tmp_path / "z2.zarr", texts, ids)
    assert again["resumed_rows"] == 0 and not any("starting over" in line for line in logs)
    resumed = open_shard(tmp_path / "z2.zarr")
    assert resumed["activations"].shape == (0, 2, model.config.hidden_size)
    assert resumed["token_norm"].shape == (0, 2) and resumed["n_tokens"].shape == (0,)


def test_hidden_size_of_a_multimodal_wrapper(tmp_path, tiny_gemma4_mm):
    model, tok = tiny_gemma4_mm
    summary, _ = _write(model, tok, tmp_path / "mm.zarr")
    shard = open_shard(tmp_path / "mm.zarr")
    assert shard.attrs["hidden_size"] == 64 and shard["activations"].shape[-1] == 64
    assert summary["n_kept"] == 6


def test_open_shard_refuses_missing_and_unfinished(tmp_path):
    with pytest.raises(ShardError, match=r"^shard .*nope\.zarr does not exist$"):
        open_shard(tmp_path / "nope.zarr")
    g = zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    g.attrs["complete"] = False
    with pytest.raises(ShardError, match=r"is not complete \(interrupted write\?\); rebuild it$"):
        open_shard(tmp_path / "x.zarr")
    shutil.rmtree(tmp_path / "x.zarr")


def test_the_os_error_decorator_itself():
    """``_os_errors_name_the_shard`` wraps ``write_shard`` at import; checked here on its own."""

    def writes(a, out, *, name):
        raise FileNotFoundError(f"no room for {a}")

    wrapped = shards._os_errors_name_the_shard(writes)
    assert wrapped.__name__ == "writes"
    with pytest.raises(ShardError) as err:
        wrapped(1, "/x/y.zarr", name="fear")
    assert str(err.value).startswith("shard 'fear' (/x/y.zarr): cannot write: no room for 1; nothing was published")
    assert isinstance(err.value.__cause__, FileNotFoundError)
    assert shards._os_errors_name_the_shard(lambda out, name: 7)("o", name="n") == 7
    with pytest.raises(ValueError):  # other errors pass unchanged
        shards._os_errors_name_the_shard(lambda out, name: int("x"))("o", name="n")


def test_open_shard_is_read_only(tmp_path):
    """A finished shard is opened read-only: a reader can neither alter nor unfinish it."""
    g = zarr.open_group(str(tmp_path / "done.zarr"), mode="w")
    g.create_array("activations", data=np.ones((2, 1, 3), np.float32))
    g.attrs.update({"complete": True, "ids": ["a", "b"]})
    shard = open_shard(tmp_path / "done.zarr")
    with pytest.raises(ValueError, match="read-only"):
        shard.attrs["complete"] = False
    with pytest.raises(ValueError, match="read-only"):
        shard["activations"][0] = 0.0
    again = open_shard(tmp_path / "done.zarr")
    assert dict(again.attrs) == {"complete": True, "ids": ["a", "b"]}
    np.testing.assert_array_equal(again["activations"][:], np.ones((2, 1, 3), np.float32))
    # a directory without shard metadata is refused and left as it was (nothing written into it)
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(Exception):
        open_shard(tmp_path / "empty.zarr")
    assert list((tmp_path / "empty.zarr").iterdir()) == []


def test_a_shard_of_one_text_is_one_row_in_one_chunk(tmp_path, tiny_llama):
    """Chunks hold min(rows, 64) rows: a one-text shard is one chunk of one row, not a padded one."""
    model, tok = tiny_llama
    texts, ids = _corpus(3, short=(0, 2))
    summary, _ = _write(model, tok, tmp_path / "one.zarr", texts, ids)
    shard = open_shard(tmp_path / "one.zarr")
    d = model.config.hidden_size
    assert summary["n_kept"] == 1 and shard.attrs["ids"] == ["calm-01"]
    assert shard["activations"].shape == (1, 2, d) and shard["activations"].chunks == (1, 2, d)
    assert shard["token_norm"].chunks == (1, 2) and shard["n_tokens"].chunks == (1,)
    assert np.isfinite(shard["activations"][:]).all() and (shard["token_norm"][:] > 0).all()


def test_progress_every_10_seconds_and_at_the_end(tmp_path, tiny_llama, monkeypatch):
    """Progress is logged when more than 10 s passed since the last line, and once at the end,
    with the texts done and the tokens per second since the start (a clock stands in for time)."""
    from emotion_vectors.extraction.extract import plan_extraction

    model, tok = tiny_llama
    texts, ids = _corpus()
    plan = plan_extraction(tok, texts, ids, pool_start=4, short_policy="skip", batch_size=2, max_batch_tokens=None)
    assert len(plan.batches) == 3
    tokens = np.cumsum([int(plan.n_tokens[b].sum()) for b in plan.batches])

    def clock(*times):  # the start, after each of the 3 batches, the end
        ticks = iter(times)
        monkeypatch.setattr(shards, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))

    clock(100.0, 110.0, 110.5, 110.9, 111.0)
    summary, logs = _write(model, tok, tmp_path / "p.zarr")
    # 10 s after the start is not yet "more than 10 s"; 10.5 s is; the end is always logged
    assert logs == [f"calm: 4/6 texts, {tokens[1] / 10.5:.0f} tokens/s", f"calm: 6/6 texts, {tokens[2] / 10.9:.0f} tokens/s"]
    assert summary["seconds"] == 11.0 and summary["tokens_extracted"] == tokens[2]
    # a job that takes a fraction of a second: the rate is over that fraction, not over a second
    clock(0.0, 0.1, 0.2, 0.25, 0.3)
    summary, logs = _write(model, tok, tmp_path / "q.zarr")
    assert logs == [f"calm: 6/6 texts, {tokens[2] / 0.25:.0f} tokens/s"]
    assert summary["seconds"] == 0.3


def test_batches_follow_the_settings_and_optional_keys_default(tmp_path, tiny_llama):
    """``max_batch_tokens`` bounds the batches (one forward pass each); settings without the
    optional keys store float32 with no token budget."""
    from emotion_vectors.extraction.extract import plan_extraction
    from emotion_vectors.core.models import decoder_layers

    model, tok = tiny_llama
    texts, ids = _corpus()
    passes = []
    handle = decoder_layers(model)[0].register_forward_pre_hook(lambda module, args: passes.append(1))
    try:
        minimal = {"pool_start": 4, "short_text_policy": "skip", "batch_size": 6}
        _write(model, tok, tmp_path / "m.zarr", texts, ids, settings=minimal)
        shard = open_shard(tmp_path / "m.zarr")
        assert len(passes) == 1  # all six texts in one batch
        assert shard["activations"].dtype == np.float32 and shard.attrs["storage_dtype"] == "float32"
        passes.clear()
        budget = dict(minimal, max_batch_tokens=30, storage_dtype="float32")
        _write(model, tok, tmp_path / "b.zarr", texts, ids, settings=budget)
    finally:
        handle.remove()
    planned = plan_extraction(tok, texts, ids, pool_start=4, short_policy="skip", batch_size=6, max_batch_tokens=30).batches
    assert len(passes) == len(planned) > 2
    np.testing.assert_allclose(open_shard(tmp_path / "b.zarr")["activations"][:], shard["activations"][:], rtol=1e-4, atol=1e-5)


def test_hidden_size_of_a_config_without_a_text_config():
    """A config with no ``get_text_config`` (a plain one) is its own text config."""
    plain = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=48))
    assert shards._hidden_size(plain) == 48


def test_partial_without_metadata_or_killed_before_its_first_batch(tmp_path, tiny_llama):
    """A partial whose group metadata is gone is logged as unreadable and started over; one
    killed before any batch finished has nothing done and resumes silently (no false alarm)."""
    model, tok = tiny_llama
    out = tmp_path / "nometa.zarr"
    _interrupted(model, tok, out)
    (tmp_path / "nometa.zarr.partial" / "zarr.json").unlink()
    summary, logs = _write(model, tok, out)
    assert summary["resumed_rows"] == 0
    prefix = f"calm: partial shard {out}.partial unreadable ("
    assert any(line.startswith(prefix) and line.endswith("); starting over") for line in logs), logs
    out = tmp_path / "early.zarr"
    _interrupted(model, tok, out, after=0)
    assert not zarr.open_group(str(tmp_path / "early.zarr.partial"), mode="r")["done"][:].any()
    summary, logs = _write(model, tok, out)
    assert summary["resumed_rows"] == 0
    assert not any("partial shard" in line or "resuming" in line for line in logs), logs


def test_five_bad_rows_are_all_listed(tmp_path, tiny_llama):
    """Up to five failed rows are named in full, with no "..." after them."""
    model, tok = tiny_llama
    texts, ids = _corpus()
    src = tmp_path / "five.zarr"
    _write(model, tok, src, texts, ids, staged=tmp_path / "staged.zarr")  # keeps a partial with every row done
    partial = zarr.open_group(str(tmp_path / "five.zarr.partial"), mode="r+")
    checks = partial["row_checksum"][:]
    checks[:5] ^= np.uint64(1)
    partial["row_checksum"][:] = checks
    summary, logs = _write(model, tok, src, texts, ids)
    assert summary["resumed_rows"] == 1
    assert (f"calm: partial shard {src}.partial: 5 finished row(s) failed the integrity check "
            f"(unreadable or checksum mismatch: {', '.join(ids[:5])}); recomputing them") in logs


def test_a_large_shard_keeps_its_small_arrays_in_one_chunk(tmp_path):
    """However many texts, ``token_norm`` and ``n_tokens`` are one chunk each (read whole) and
    activations 64 rows a chunk; zarr's automatic chunking would split the first two past 20,000
    rows. Written by ``_write_final`` from a finished partial (no model needed)."""
    n, n_layers, d = 40_000, 2, 1
    rng = np.random.default_rng(0)
    partial = zarr.open_group(str(tmp_path / "big.zarr.partial"), mode="w")
    acts = rng.standard_normal((n, n_layers, d)).astype(np.float32)
    partial.create_array("activations", data=acts, chunks=(4096, n_layers, d))
    ids = [f"calm-{i:05d}" for i in range(n)]
    plan = shards._ShardPlan(
        out=tmp_path / "big.zarr", partial=tmp_path / "big.zarr.partial", tmp=tmp_path / "big.zarr.tmp",
        extraction=types.SimpleNamespace(skipped=[]), kept=list(range(n)), row_ids=ids, fingerprint="f" * 24,
        n_layers=n_layers, d=d, storage_dtype="float32",
    )
    norms = rng.random((n, n_layers)).astype(np.float32)
    n_tok = rng.integers(5, 500, n).astype(np.int64)
    state = shards._PartialState(partial, np.ones(n, bool), norms, n_tok, np.zeros(n, np.uint64), 0)
    shards._write_final(plan, state, ids, [3, 7], SETTINGS, "calm", INFO, {"name": "calm"}, None)
    shard = open_shard(tmp_path / "big.zarr.tmp")
    assert shard["token_norm"].chunks == (n, n_layers) and shard["n_tokens"].chunks == (n,)
    assert shard["activations"].chunks == (64, n_layers, d)
    np.testing.assert_array_equal(shard["activations"][:], acts)
    np.testing.assert_array_equal(shard["token_norm"][:], norms)
    np.testing.assert_array_equal(shard["n_tokens"][:], n_tok)


def test_a_rerun_clears_the_tmp_a_kill_left(tmp_path, tiny_llama):
    """A job killed while copying into ``<out>.tmp`` leaves it behind; the rerun writes its copy
    there afresh (none of the stale files reach the shard) and leaves no ``.tmp``."""
    model, tok = tiny_llama
    out = tmp_path / "s.zarr"
    stale = tmp_path / "s.zarr.tmp"
    (stale / "activations").mkdir(parents=True)
    (stale / "activations" / "junk").write_text("x")
    (stale / "stale-file").write_text("x")
    _write(model, tok, out)
    assert not stale.exists() and open_shard(out).attrs["complete"]
    assert not (out / "stale-file").exists() and not (out / "activations" / "junk").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
