"""Fast parts of the fault battery (``python -m emotion_vectors.faults``, ``make faults``).

The battery itself (real SIGKILLs, the real default model, a full filesystem, snakemake runs)
takes minutes and is not part of the test suite; these tests check, in seconds, that corrupted
resume state is detected and never used silently, and that the malformed configs are refused;
one runs the battery's command line on its smallest section (one SIGKILL of an activation shard
write, ~25 s), so that the command ``make faults`` runs is itself tested.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from emotion_vectors import faults
from emotion_vectors.core.config import ConfigError, validate_config
from emotion_vectors.corpus.generate import Checkpoint
from emotion_vectors.core.models import decoder_layers
from emotion_vectors.extraction.shards import open_shard, write_shard

SETTINGS = dict(faults.ACT_SETTINGS)
INFO = {"path": "tiny-llama", "revision": "test", "dtype": "float32", "quantization": "none"}
LAYERS = [0, 2, 4]


class Crash(RuntimeError):
    """Stands in for the job dying mid-shard (the battery uses a real SIGKILL)."""


def _interrupted_partial(model, tok, out, after_batches):
    """Write ``out`` until ``after_batches`` batches are done, then crash; returns done rows."""
    texts, ids = faults.activation_corpus()
    calls = []

    def crash(module, args):
        calls.append(1)
        if len(calls) > after_batches:
            raise Crash("killed")

    handle = decoder_layers(model)[0].register_forward_pre_hook(crash)
    try:
        with pytest.raises(Crash):
            write_shard(model, tok, texts, ids, LAYERS, out, SETTINGS, name="calm", model_info=INFO)
    finally:
        handle.remove()
    return faults.done_rows(out)


def _resume(model, tok, out):
    texts, ids = faults.activation_corpus()
    logs = []
    summary = write_shard(model, tok, texts, ids, LAYERS, out, SETTINGS, name="calm", model_info=INFO, log=logs.append)
    return summary, "\n".join(logs)


def test_corrupted_partial_is_detected_and_recomputed(tmp_path, tiny_llama):
    model, tok = tiny_llama
    texts, ids = faults.activation_corpus()
    fresh = tmp_path / "fresh.zarr"
    write_shard(model, tok, texts, ids, LAYERS, fresh, SETTINGS, name="calm", model_info=INFO)
    reference = open_shard(fresh)

    source = tmp_path / "source.zarr"
    done = _interrupted_partial(model, tok, source, after_batches=3)
    assert len(done) == 6
    r0, r1 = int(done[0]), int(done[1])
    cases = {
        # name: (corrupt(out), rows that may be reused, message expected in the log)
        "flip": (lambda o: faults.flip_byte(faults.row_chunk(o, r0)), 5, "integrity check"),
        "truncate": (lambda o: faults.truncate_file(faults.row_chunk(o, r0)), 5, "integrity check"),
        "delete": (lambda o: faults.row_chunk(o, r1).unlink(), 5, "integrity check"),
        "garbage-json": (lambda o: faults.write_garbage(faults.partial_of(o) / "activations" / "zarr.json"), 0, "starting over"),
        "truncate-token-norm": (lambda o: faults.truncate_file(faults.partial_of(o) / "token_norm" / "c" / "0" / "0"), 0, "starting over"),
        "delete-done": (lambda o: (faults.partial_of(o) / "done" / "c" / "0").unlink(), 0, ""),
    }
    for name, (corrupt, reusable, message) in cases.items():
        out = tmp_path / f"{name}.zarr"
        shutil.copytree(faults.partial_of(source), faults.partial_of(out))
        corrupt(out)
        summary, log = _resume(model, tok, out)
        assert summary["resumed_rows"] == reusable, (name, log)
        assert message in log, (name, log)
        got = open_shard(out)
        np.testing.assert_array_equal(got["activations"][:], reference["activations"][:], err_msg=name)
        np.testing.assert_array_equal(got["token_norm"][:], reference["token_norm"][:], err_msg=name)
        np.testing.assert_array_equal(got["n_tokens"][:], reference["n_tokens"][:], err_msg=name)

    # An intact partial is resumed with all its rows (verification does not reject good rows).
    out = tmp_path / "intact.zarr"
    shutil.copytree(faults.partial_of(source), faults.partial_of(out))
    summary, log = _resume(model, tok, out)
    assert summary["resumed_rows"] == 6 and "integrity" not in log


def test_corrupted_story_checkpoint_is_detected(tmp_path):
    logs = []
    ckpt = Checkpoint(tmp_path / "calm.json", "fp", log=logs.append)
    state = {"round": 1, "pending": [[0, 1]], "batch_in_round": 1, "replies": 2,
             "stories": {"0": [{"text": "She folded the letter and waited by the window."}]}}
    ckpt.save(state)
    assert ckpt.load() == dict(state, fingerprint="fp") and not logs
    good = ckpt.path.read_bytes()

    def flip_letter(path):
        raw = path.read_bytes()
        faults.flip_byte(path, raw.index(b"folded"), 0x20)  # "Folded": still valid JSON

    corruptions = {
        "truncated": lambda p: faults.truncate_file(p),
        "empty": lambda p: faults.truncate_file(p, 0.0),
        "garbage": lambda p: faults.write_garbage(p),
        "flipped letter": flip_letter,
        "not an object": lambda p: p.write_text("[1, 2]"),
        "no checksum": lambda p: p.write_text(json.dumps(dict(state, fingerprint="fp"))),
    }
    for name, corrupt in corruptions.items():
        ckpt.path.write_bytes(good)
        corrupt(ckpt.path)
        logs.clear()
        assert ckpt.load() is None, name
        assert len(logs) == 1 and "unusable" in logs[0] and str(ckpt.path) in logs[0], (name, logs)

    ckpt.path.write_bytes(good)
    logs.clear()
    assert Checkpoint(tmp_path / "calm.json", "other settings", log=logs.append).load() is None
    assert "other settings" in logs[0]


def test_malformed_configs_name_their_key():
    """The battery's 30 malformed configs (those that reach our validator) are refused in-process."""
    cases = faults.config_cases()
    bad = [c for c in cases if not c.accept]
    assert len(bad) == 30 and len({c.name for c in cases}) == len(cases)
    for case in bad:
        if case.raw is not None or case.cli:
            continue  # Snakemake's own parsing, or a --config override: the battery runs snakemake
        cfg = faults.default_config()
        cfg["run"] = f"faults-test-{case.name}"
        case.mutate(cfg)
        with pytest.raises(ConfigError) as err:
            validate_config(cfg, base_dir=faults.REPO_ROOT)
        assert all(s in str(err.value) for s in case.expect), (case.name, str(err.value))
    for case in cases:
        if case.accept and not case.cli:
            cfg = faults.default_config()
            case.mutate(cfg)
            validate_config(cfg, base_dir=faults.REPO_ROOT)


def test_error_line_picks_the_message():
    out = "Building DAG\nWorkflowError:\nInvalid configuration: config key stories.per_topic: -3 is less\n"
    assert faults.error_line(out).startswith("Invalid configuration: config key stories.per_topic")
    assert faults.error_line("WorkflowError:\nConfig file is not valid JSON or YAML.\n") == "Config file is not valid JSON or YAML."


def test_server_fault_helpers(tmp_path):
    """The model-server section's tools: the long request's corpus, and filling a listen queue
    until the kernel answers EAGAIN (what thousands of waiting jobs do to a busy server)."""
    import socket

    texts, ids = faults.big_corpus(3)
    assert len(texts) == len(set(ids)) == 36 and texts[0].startswith("Part 1. Note 1.")
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(3)
    held = faults.fill_listen_queue(path)
    try:
        assert 3 <= len(held) <= 5  # the kernel queues backlog (+1) connections
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        with pytest.raises(BlockingIOError):
            probe.connect(path)
        probe.close()
        conn, _ = listener.accept()  # one accepted: room for exactly one more
        conn.close()
        more = faults.fill_listen_queue(path)
        assert len(more) == 1
        held += more
    finally:
        for s in held:
            s.close()
        listener.close()
    assert "server" in faults.SECTIONS
    text = faults.details_markdown({"server": {"symlinks": [{"case": "<shard>.partial", "ok": True,
                                                            "outside_unchanged": True, "result": "refusing to write x"}]}})
    assert "### Model server" in text and "planted symlink, <shard>.partial: ok" in text


def test_the_battery_command_runs_its_kill_section_end_to_end(tmp_path):
    """``python -m emotion_vectors.faults --only kill-activations --kills 1``: the reference run,
    one real SIGKILL at a seeded point, the resume, the comparison, the table and the details,
    all under ``--out`` (the repository's results/ untouched)."""
    proc = subprocess.run([sys.executable, "-m", "emotion_vectors.faults", "--only", "kill-activations",
                           "--kills", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "faults.md").read_text()
    assert "| SIGKILL during an activation shard write | 1 | 1 | 0 rows |" in table
    assert "bit-identical to the uninterrupted run" in table
    details = json.loads((tmp_path / "details.json").read_text())
    assert details and (tmp_path / "work" / "activations" / "ref.zarr").is_dir()
