"""The fault battery's core: its state (seeded RNG, work directory, the model and story job under
test), the table rows and details it collects, and the child processes it runs. The faults
themselves are functions of one module per family, each given the battery."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .children import ChildRun, run_child
from .common import STORY_EMOTION, STORY_OVERRIDES, STORY_TOPICS, _log, subject_spec, validated_default


class Battery:
    """Runs the faults' child processes and collects the table rows and details."""

    def __init__(self, seed: int, kills: int, work: Path, log: Callable[[str], None] = _log, disk: str = "auto"):
        self.disk = disk
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.kills = kills
        self.work = work
        self.log = log
        self.rows: list[dict[str, Any]] = []
        self.details: dict[str, Any] = {}
        self.model = subject_spec()
        self.config_controls_ok = True  # set by the malformed-config section
        self._n = 0
        cfg = validated_default(n_topics=STORY_TOPICS, stories=STORY_OVERRIDES)
        # The stories rule's params, computed as workflow/rules/corpus.smk does.
        generator = cfg["models"]["generator"]
        selection = (cfg["stories"].get("selection") or {}).get("enabled", False)
        self.story = {
            "emotion": STORY_EMOTION,
            "topics": cfg["topic_list"],
            "settings": cfg["stories"],
            "generator": generator,
            "selector": cfg["models"].get("selector") or generator,
            "emotions": cfg["emotion_list"] if selection else [],
            "prompts_dir": cfg["prompts_dir"],
        }

    # ---- child processes

    def write_spec(self, spec: dict[str, Any], indent: int | None = None) -> Path:
        """Write a child's spec as ``work/children/<n>-<mode>.json`` (its output goes beside it)."""
        self._n += 1
        spec_file = self.work / "children" / f"{self._n:03d}-{spec['mode']}.json"
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(json.dumps(spec, indent=indent))
        return spec_file

    def run_child(
        self,
        spec: dict[str, Any],
        *,
        ready: Callable[[], bool] | None = None,
        count: Callable[[], int] | None = None,
        finished: Callable[[], bool] | None = None,
        kill_at: tuple[int, float] | None = None,
        timeout: float = 900.0,
    ) -> ChildRun:
        """Run a child; with ``kill_at=(n, delay)`` SIGKILL it ``delay`` s after it reached
        checkpoint ``n`` (0 = after it was ready). Polls ``ready``, ``count`` and ``finished``
        (its output is complete) every 10 ms, for the timeline."""
        return run_child(self.write_spec(spec, indent=1), fsize_limit=spec.get("fsize_limit"), ready=ready, count=count,
                         finished=finished, kill_at=kill_at, timeout=timeout)

    def extract_spec(self, outs: list[Path], ready: Path | None = None, fsize_limit: int | None = None) -> dict[str, Any]:
        return {
            "mode": "extract",
            "model": self.model,
            "jobs": [{"out": str(o)} for o in outs],
            "ready": str(ready) if ready else None,
            "fsize_limit": fsize_limit,
        }

    def story_spec(self, outs: list[Path], fsize_limit: int | None = None) -> dict[str, Any]:
        return {
            "mode": "stories",
            **self.story,
            "jobs": [{"out": str(o), "log": str(self.story_log(o))} for o in outs],
            "fsize_limit": fsize_limit,
        }

    def story_log(self, out: Path) -> Path:
        return self.work / "logs" / (out.parent.name + "-" + out.stem + ".log")

    # ---- table

    def add(self, fault: str, injected: int, survived: int, lost: str, notes: str) -> None:
        self.rows.append({"fault": fault, "injected": injected, "survived": survived, "lost": lost, "notes": notes})
        self.log(f"== {fault}: injected {injected}, survived {survived}, data lost {lost}; {notes}")
