"""scripts/results_doc.py: only the generated blocks change, from the runs on disk; --check."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("results_doc", ROOT / "scripts" / "results_doc.py")
results_doc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_doc)

BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(path: Path, seconds: float, cpu: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BENCH_HEADER + f"{seconds}\t0:00:01\t1\t1\t1\t1\t0\t0\t100\t{cpu}\n")


@pytest.fixture
def runs(tmp_path):
    b = tmp_path / "results" / "r" / "benchmarks"
    bench(b / "stories" / "calm.json.tsv", 10, 9)
    bench(b / "stories" / "sad.json.tsv", 20, 18)
    bench(b / "analyze.tsv", 5, 4)
    bench(b / "subjects" / "g" / "activations" / "calm.tsv", 7, 6)
    (tmp_path / "results" / "r" / "compare").mkdir()
    (tmp_path / "results" / "r" / "compare" / "comparison.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    return tmp_path


DOC = """# Results
Prose that stays.
<!-- generated: stages -->
old table
<!-- end generated: stages -->
More prose.
<!-- generated: compare -->
<!-- end generated: compare -->
<!-- generated: findings -->
kept: the run has no findings
<!-- end generated: findings -->
"""


def test_rewrites_only_the_blocks_and_check_sees_staleness(runs, capsys):
    doc = runs / "doc.md"
    doc.write_text(DOC)
    args = ["--results", str(runs / "results"), "--run", "r", "--doc", str(doc)]
    assert results_doc.main(args + ["--check"]) == 1
    assert doc.read_text() == DOC  # --check changes nothing
    assert results_doc.main(args) == 0
    text = doc.read_text()
    assert text.startswith("# Results\nProse that stays.\n<!-- generated: stages -->\n| stage |")
    assert "old table" not in text and "More prose." in text
    assert "| corpus: stories | 2 | 30 | 27 |" in text
    assert "| geometry | 1 | 5 | 4 |" in text
    assert "| other subjects: reading, vectors, analysis | 1 | 7 | 6 |" in text
    assert "| **all** | 4 | **42** | 37 |" in text
    assert "<!-- generated: compare -->\n| a | b |\n|---|---|\n| 1 | 2 |\n<!-- end generated: compare -->" in text
    assert "kept: the run has no findings" in text  # no findings.tsv: block left alone, named
    assert "block 'findings' left as it is" in capsys.readouterr().err
    assert results_doc.main(args + ["--check"]) == 0  # now up to date


def test_unknown_block_is_refused(runs):
    doc = runs / "doc.md"
    doc.write_text("<!-- generated: nonsense -->\n<!-- end generated: nonsense -->\n")
    with pytest.raises(SystemExit, match="unknown generated block 'nonsense'"):
        results_doc.main(["--results", str(runs / "results"), "--run", "r", "--doc", str(doc)])


def test_steering_block_reads_the_scores_table(runs):
    cols = ["emotion", "method", "strength", "score", "score_lo", "score_hi", "kl", "vs_prompting",
            "vs_prompting_lo", "vs_prompting_hi", "p_vs_prompting_holm"]
    rows = [["joy", "unsteered", 0, 0.1, 0, 0.3, 0, "", "", "", ""],
            ["joy", "prompting", 0, 0.5, 0.25, 0.75, "", "", "", "", ""],
            ["joy", "steering", 0.2, 0.3, 0.1, 0.5, 0.24, -0.2, -0.45, 0.05, 0.375],
            ["joy", "both", 0.2, 0.6, 0.4, 0.8, 0.24, 0.1, -0.1, 0.3, 1],
            ["joy", "shuffled-label @0.2", 0.2, 0.2, 0, 0.4, 0.2, "", "", "", ""],
            ["calm", "continuation (own word, 0.2)", 0.2, 1.1, "", "", "", "", "", "", ""]]
    (runs / "results" / "r" / "steering").mkdir()
    (runs / "results" / "r" / "steering" / "scores.tsv").write_text(
        "\n".join("\t".join(map(str, r)) for r in [cols, *rows]) + "\n")
    block = results_doc.steering_block(runs / "results", "r")
    lines = block.splitlines()
    assert len(lines) == 3  # header, rule, one emotion (calm has only the continuation line)
    assert lines[2] == ("| joy | 0.10 | 0.50 [0.25, 0.75] | 0.30 [0.10, 0.50] (0.2; 0.24) | 0.60 [0.40, 0.80] "
                        "| −0.20 [−0.45, 0.05] (0.38) |")
    assert results_doc.steering_block(runs / "results", "absent") is None


def test_only_rewrites_the_named_blocks(runs):
    doc = runs / "doc.md"
    doc.write_text(DOC)
    args = ["--results", str(runs / "results"), "--run", "r", "--doc", str(doc), "--only", "stages"]
    assert results_doc.main(args) == 0
    text = doc.read_text()
    assert "| corpus: stories | 2 | 30 | 27 |" in text and "old table" not in text
    assert "<!-- generated: compare -->\n<!-- end generated: compare -->" in text  # not named: left as it was
