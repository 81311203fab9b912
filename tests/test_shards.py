"""Activation shards: atomic, resumable after a hard kill, identical to an uninterrupted run."""

import contextlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from emotion_vectors.extraction.shards import ShardError, open_shard, write_shard

SETTINGS = {"pool_start": 4, "short_text_policy": "skip", "batch_size": 2, "max_batch_tokens": None, "storage_dtype": "float32"}
INFO = {"path": "tiny-llama", "revision": "test", "dtype": "float32", "quantization": "none"}


def _corpus(n=12):
    rng = np.random.default_rng(1)
    words = "the fence rain letter garden window quiet road light morning neighbor paint".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 25)))) for _ in range(n)]
    return texts, [f"calm-t000-s{i:02d}" for i in range(n)]


@contextlib.contextmanager
def edited_block_output(model, layer, edit):
    """Apply ``edit(hidden)`` in place to the output of decoder block ``layer`` while inside."""
    from emotion_vectors.core.models import decoder_layers

    def hook(module, args, output):
        edit(output[0] if isinstance(output, tuple) else output)
        return output

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _long_corpus(n=4):
    texts, ids = _corpus(n)
    return [t + " more words here to be long enough" for t in texts], ids


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, tiny_llama):
    model, tok = tiny_llama
    path = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval(), tok


def test_hard_kill_then_resume_equals_uninterrupted(tmp_path, saved_tiny):
    texts, ids = _corpus()
    killed = tmp_path / "killed.zarr"
    script = textwrap.dedent(
        f"""
        import os, signal
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from emotion_vectors.core.models import decoder_layers
        from emotion_vectors.extraction.shards import write_shard
        tok = AutoTokenizer.from_pretrained({str(saved_tiny)!r}); tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained({str(saved_tiny)!r}, dtype="float32").eval()
        calls = []
        def kill_on_third_batch(module, args):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        decoder_layers(model)[0].register_forward_pre_hook(kill_on_third_batch)
        write_shard(model, tok, {texts!r}, {ids!r}, [0, 2], {str(killed)!r}, {SETTINGS!r}, name="calm", model_info={INFO!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert not killed.exists(), "a killed job must not leave a shard that looks finished"
    partial = zarr.open_group(str(killed) + ".partial", mode="r")
    assert partial["done"][:].sum() == 4  # two batches of two finished before the kill
    with pytest.raises(ShardError, match="does not exist"):
        open_shard(killed)

    model, tok = _load(saved_tiny)
    resumed = write_shard(model, tok, texts, ids, [0, 2], killed, SETTINGS, name="calm", model_info=INFO)
    assert resumed["resumed_rows"] == 4
    fresh_path = tmp_path / "fresh.zarr"
    fresh = write_shard(model, tok, texts, ids, [0, 2], fresh_path, SETTINGS, name="calm", model_info=INFO)
    assert fresh["resumed_rows"] == 0
    a, b = open_shard(killed), open_shard(fresh_path)
    np.testing.assert_array_equal(a["activations"][:], b["activations"][:])
    np.testing.assert_array_equal(a["token_norm"][:], b["token_norm"][:])
    assert a.attrs["ids"] == b.attrs["ids"] and a.attrs["skipped"] == b.attrs["skipped"]
    assert not (tmp_path / "killed.zarr.partial").exists()


def test_shard_contents_short_texts_and_attributes(tmp_path, tiny_llama):
    model, tok = tiny_llama
    texts, ids = _corpus()
    out = tmp_path / "s.zarr"
    summary = write_shard(model, tok, texts, ids, [1, 3], out, SETTINGS, name="calm", model_info=INFO, attrs={"provenance": {"stage": "test"}})
    shard = open_shard(out)
    n_tok = [len(tok(t)["input_ids"]) for t in texts]
    kept = [i for i, n in enumerate(n_tok) if n > SETTINGS["pool_start"]]
    assert summary["n_kept"] == len(kept) and summary["n_skipped"] == len(texts) - len(kept) > 0
    assert shard["activations"].shape == (len(kept), 2, model.config.hidden_size)
    assert shard.attrs["ids"] == [ids[i] for i in kept]
    assert [s["id"] for s in shard.attrs["skipped"]] == [ids[i] for i in range(len(texts)) if i not in kept]
    np.testing.assert_array_equal(shard["n_tokens"][:], [n_tok[i] for i in kept])
    assert shard.attrs["layers"] == [1, 3] and "block" in shard.attrs["layer_convention"]
    assert shard.attrs["model"] == INFO and shard.attrs["provenance"] == {"stage": "test"}


def test_partial_store_is_never_accepted(tmp_path):
    g = zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    g.attrs["layers"] = [0]
    with pytest.raises(ShardError, match="not complete"):
        open_shard(tmp_path / "x.zarr")


def test_float16_storage_refuses_overflow(tmp_path, tiny_llama):
    model, tok = tiny_llama
    texts, ids = _long_corpus()

    def huge(hidden):
        hidden[..., 0] = 1e6

    with edited_block_output(model, 1, huge):
        with pytest.raises(ShardError, match=r"^calm: text 'calm-t000-s0\d' at layer 1 has \|value\| up to 1e\+06, beyond float16's 65504; "):
            write_shard(model, tok, texts, ids, [1], tmp_path / "h.zarr", dict(SETTINGS, storage_dtype="float16"), name="calm", model_info=INFO)
        ok = write_shard(model, tok, texts, ids, [1], tmp_path / "f.zarr", SETTINGS, name="calm", model_info=INFO)
    assert ok["n_kept"] == 4
    assert np.isfinite(open_shard(tmp_path / "f.zarr")["activations"][:]).all()


def test_nan_names_shard_story_and_layer(tmp_path, tiny_llama):
    model, tok = tiny_llama
    texts, ids = _long_corpus()

    def poison(hidden):
        hidden[..., -1, 0] = float("nan")

    with edited_block_output(model, 2, poison):
        with pytest.raises(ShardError) as err:
            write_shard(model, tok, texts, ids, [0, 2], tmp_path / "n.zarr", SETTINGS, name="calm", model_info=INFO)
    msg = str(err.value)
    assert "'calm'" in msg and "calm-t000-s0" in msg and "layer 2" in msg
    assert not (tmp_path / "n.zarr").exists()


_KILL_AT_STEP = textwrap.dedent(
    """
    import os, shutil, signal, sys
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from emotion_vectors.extraction.shards import write_shard
    model_dir, out, step, texts, ids, settings, info = sys.argv[1], sys.argv[2], sys.argv[3], *map(eval, sys.argv[4:])
    name = os.path.basename(out)
    real_rename, real_rmtree = os.rename, shutil.rmtree
    def rename(src, dst, *args, **kwargs):  # SIGKILL just before the finished shard is renamed in
        if step == "rename-in" and os.path.basename(str(src)) == name + ".tmp":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rename(src, dst, *args, **kwargs)
    def rmtree(path, *args, **kwargs):  # SIGKILL while the old shard is being removed
        if step == "remove-old" and os.path.basename(str(path)).startswith(name + ".old-"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rmtree(path, *args, **kwargs)
    os.rename, shutil.rmtree = rename, rmtree
    tok = AutoTokenizer.from_pretrained(model_dir); tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    write_shard(model, tok, texts, ids, [0, 2], out, settings, name="calm", model_info=info)
    """
)


@pytest.mark.parametrize("step", ["rename-in", "remove-old"])
def test_a_kill_while_replacing_a_shard_leaves_a_complete_one(tmp_path, saved_tiny, step):
    """Replacing a shard moves the old one aside first: SIGKILLed just before the new one is
    renamed in, the old one is whole aside; SIGKILLed while the old one is being removed, the
    new one is whole under the name. Never a half-deleted shard under the finished name."""
    texts, ids = _corpus(6)
    model, tok = _load(saved_tiny)
    out = tmp_path / "k.zarr"
    write_shard(model, tok, texts, ids, [0], out, SETTINGS, name="calm", model_info=INFO)
    old = open_shard(out)
    old_acts = old["activations"][:]
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_AT_STEP, str(saved_tiny), str(out), step, repr(texts), repr(ids), repr(SETTINGS), repr(INFO)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == -9, proc.stderr
    aside = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("k.zarr.old-"))
    assert len(aside) == 1, sorted(p.name for p in tmp_path.iterdir())
    if step == "rename-in":
        assert not out.exists()  # the old shard was moved aside whole, not deleted in place
        kept = open_shard(tmp_path / aside[0])
        assert kept.attrs["layers"] == [0]
        np.testing.assert_array_equal(kept["activations"][:], old_acts)
        assert open_shard(tmp_path / "k.zarr.tmp").attrs["layers"] == [0, 2]  # the new one, finished
    else:
        assert open_shard(out).attrs["layers"] == [0, 2]  # the new shard, complete, under the name
    # the rerun publishes the new shard and removes what the killed job left aside
    write_shard(model, tok, texts, ids, [0, 2], out, SETTINGS, name="calm", model_info=INFO)
    assert open_shard(out).attrs["layers"] == [0, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.zarr"]


def test_a_staging_path_outside_the_shard_directory_is_refused_first(tmp_path, tiny_llama):
    model, tok = tiny_llama
    texts, ids = _corpus(4)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ShardError, match=r"^calm: the staging path .*/elsewhere/s\.zarr\.staged-1 must be in the directory of the shard"):
        write_shard(model, tok, texts, ids, [0], tmp_path / "s.zarr", SETTINGS, name="calm", model_info=INFO,
                    staged=tmp_path / "elsewhere" / "s.zarr.staged-1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]  # refused before any work
