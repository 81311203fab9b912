"""The Makefile's workflow targets plan what they say: each snakemake command they run is dry-run
(SNAKEMAKE_FLAGS=--dry-run) and its plan checked. Catches a target swallowed by a flag that takes
every word after it (``--configfile a.yaml b.yaml target`` reads ``target`` as a config file)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from emotion_vectors.core.config import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _plans(target: str) -> list[dict[str, int]]:
    """Job counts per rule of each snakemake command of ``make <target>``, dry-run, in order.

    The install step is taken as done (``-o``): this test runs inside the installed environment.
    """
    proc = subprocess.run(["make", "-o", ".venv/.installed", target, "SNAKEMAKE_FLAGS=--dry-run"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    plans: list[dict[str, int]] = []
    for command in re.split(r"^\S*snakemake ", out, flags=re.M)[1:]:
        stats = command.split("Job stats:", 1)[1].split("total", 1)[0] if "Job stats:" in command else ""
        plans.append({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, flags=re.M)})
    return plans


def test_controls_target_builds_the_negative_control_the_fresh_seed_corpus_and_the_default_findings():
    negative, fresh_seed, findings = _plans("controls")
    # the negative control: its whole run, findings included
    assert negative.get("findings") == 1 and negative.get("steering_eval") == 1 and negative.get("vectors") == 1
    # fresh seeds: the corpus and its diagnostics only (not the whole run: the target was read)
    assert fresh_seed.get("diagnostics_summary") == 1 and fresh_seed.get("stories", 0) > 0
    assert "findings" not in fresh_seed and "steering_eval" not in fresh_seed and "all" not in fresh_seed
    # the default's findings forced (the target, not `all`)
    assert findings.get("findings") == 1 and "all" not in findings


def test_run_target_plans_the_default_workflow():
    (run,) = _plans("run")
    assert run.get("all") == 1 and run.get("findings") == 1
