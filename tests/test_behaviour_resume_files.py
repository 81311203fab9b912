"""A finished behaviour run leaves nothing beside its outputs (``run.discard_resume_files``)."""

from emotion_vectors.steering.behaviour.run import discard_resume_files, read_transcripts


def test_resume_files_are_removed_once_the_run_is_finished(tmp_path):
    out = tmp_path / "blackmail" / "transcripts.jsonl"
    out.parent.mkdir()
    partial = out.with_name(out.name + ".partial")
    partial.write_text('{"a": 1}\n')
    stale = partial.with_name(partial.name + ".stale")
    stale.write_text('{"b": 2}\n')
    out.write_text('{"final": true}\n')
    victim = tmp_path / "victim.jsonl"
    victim.write_text("keep\n")
    assert discard_resume_files(partial) == [partial, stale]
    assert sorted(p.name for p in out.parent.iterdir()) == ["transcripts.jsonl"]
    assert discard_resume_files(partial) == []  # nothing left: nothing to do
    partial.symlink_to(victim)  # a symlink is removed, never what it points to
    assert discard_resume_files(partial) == [partial] and victim.read_text() == "keep\n"
    assert read_transcripts(partial) == ([], 0)
