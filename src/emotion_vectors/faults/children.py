"""Child processes of the fault battery: the real jobs it kills and corrupts (an activation shard,
the stories job, the model server's clients), each run by ``python -m emotion_vectors.faults
_child SPEC``, and the parent's side (start, watch, SIGKILL, read the results)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from .common import ACT_NAME, ACT_SETTINGS, MODELS_DIR, REPO_ROOT, STORIES_SCRIPT, activation_corpus

# --------------------------------------------------------------------------- child processes


def _emit(key: str, result: dict[str, Any]) -> None:
    """Report one result to the parent on the real stdout (never a file: see RLIMIT_FSIZE)."""
    sys.__stdout__.write("RESULT " + json.dumps({"key": key, **result}, default=str) + "\n")
    sys.__stdout__.flush()


def _limit_file_size(limit: int | None) -> None:
    if limit:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _child_extract(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(1)
    from ..extraction.extract import default_layers
    from ..core.models import decoder_layers, load_model
    from ..extraction.shards import write_shard

    lm = load_model(spec["model"], MODELS_DIR)
    layers = default_layers(len(decoder_layers(lm.model)))
    texts, ids = activation_corpus()
    _limit_file_size(spec.get("fsize_limit"))
    for job in spec["jobs"]:
        if spec.get("ready"):
            Path(spec["ready"]).write_text("ready")
        logs: list[str] = []
        try:
            summary = write_shard(
                lm.model, lm.tokenizer, texts, ids, layers, job["out"], ACT_SETTINGS,
                name=ACT_NAME, model_info=lm.info, log=logs.append,
            )
            _emit(job["out"], {"ok": True, "summary": summary, "log": logs})
        except Exception as err:  # noqa: BLE001 - reported to the parent
            _emit(job["out"], {"ok": False, "error": f"{type(err).__name__}: {err}", "log": logs})


class _Params(SimpleNamespace):
    """The ``params`` of the ``stories`` rule (workflow/rules/corpus.smk), as the job sees them."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"workflow/scripts/stories.py asks for params.{name}, which the fault battery does not "
            "give: add it to Battery.story (emotion_vectors/faults/battery.py) and _child_stories "
            "(emotion_vectors/faults/children.py) as workflow/rules/corpus.smk computes it"
        )


def _child_stories(spec: dict[str, Any]) -> None:
    """Run the real ``workflow/scripts/stories.py`` job for each output, as Snakemake would."""
    import runpy

    from ..core.common import slug

    _limit_file_size(spec.get("fsize_limit"))
    for job in spec["jobs"]:
        Path(job["log"]).parent.mkdir(parents=True, exist_ok=True)
        Path(job["out"]).parent.mkdir(parents=True, exist_ok=True)
        smk = SimpleNamespace(
            params=_Params(
                emotion=spec["emotion"],
                topics=spec["topics"],
                settings=spec["settings"],
                generator=spec["generator"],
                selector=spec["selector"],
                emotions=spec["emotions"],
                models_dir=str(MODELS_DIR),
            ),
            config={"prompts_dir": spec["prompts_dir"]},
            input=SimpleNamespace(prompts=f"{spec['prompts_dir']}/story.yaml"),
            output=[job["out"]],
            log=[job["log"]],
            threads=1,
            resources=SimpleNamespace(gpu=0),
            rule="stories",
            wildcards=SimpleNamespace(emotion=slug(spec["emotion"])),
        )
        saved = sys.stdout, sys.stderr
        try:
            runpy.run_path(str(STORIES_SCRIPT), init_globals={"snakemake": smk}, run_name="__main__")
            result = {"ok": True}
        except Exception as err:  # noqa: BLE001 - reported to the parent
            result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        finally:
            if sys.stderr is not saved[1]:
                with contextlib.suppress(OSError):
                    sys.stderr.close()
            sys.stdout, sys.stderr = saved
        _emit(job["out"], result)


def _child_server_job(spec: dict[str, Any]) -> None:
    """Real jobs of the model server's clients: ``extract_shard`` as workflow/scripts/activations.py
    calls it, or a ``ServerReader`` read as scoring does (the server is started if none is up)."""
    import logging

    import torch

    torch.set_num_threads(1)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..extraction.reading import ServerReader, gather
    from ..extraction.serve_subject import extract_shard, subject_server

    params = spec["server"]
    for job in spec["jobs"]:
        try:
            if job["kind"] == "extract":
                summary = extract_shard(name=job["name"], texts=job["texts"], ids=job["ids"], output=job["out"], **params)
                _emit(job["key"], {"ok": True, "summary": summary})
            else:
                x, summary = gather(ServerReader(subject_server(**params)), job["texts"], layer=job["layer"], pool_start=0,
                                    max_tokens=64)
                _emit(job["key"], {"ok": True, "rows": int(np.isfinite(x).all(axis=1).sum()), "tokens": summary.tokens})
        except Exception as err:  # noqa: BLE001 - reported to the parent
            _emit(job["key"], {"ok": False, "error": f"{type(err).__name__}: {err}"})


def child_main(spec_file: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    os.chdir(REPO_ROOT)
    {"extract": _child_extract, "stories": _child_stories, "server_job": _child_server_job}[spec["mode"]](spec)
    return 0


@dataclass
class ChildRun:
    """What a child process did: exit code, whether we killed it, its timeline and results."""

    rc: int
    killed: bool
    ready_at: float | None  # seconds from start
    checkpoints: list[float]  # seconds after ready at which checkpoint k+1 was seen
    ended_at: float  # seconds after ready (or after start if never ready)
    finished_at: float | None  # seconds after ready at which the output was complete
    results: dict[str, dict[str, Any]]
    output: str

    def result(self, key: str | Path) -> dict[str, Any]:
        return self.results.get(str(key), {"ok": False, "error": f"no result (rc {self.rc}): {self.output[-800:]}"})


# --------------------------------------------------------------------------- the parent's side


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A child's environment: offline, one thread, the repository's ``src`` first on the path."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", **(extra or {}))
    env["PYTHONPATH"] = str(REPO_ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def child_command(spec_file: Path) -> list[str]:
    return [sys.executable, "-m", "emotion_vectors.faults", "_child", str(spec_file)]


def read_results(output: str) -> dict[str, dict[str, Any]]:
    """The ``RESULT`` lines of a child's output, by key."""
    results = {}
    for line in output.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            results[res.pop("key")] = res
    return results


def run_child(
    spec_file: Path,
    *,
    fsize_limit: int | None = None,
    ready: Callable[[], bool] | None = None,
    count: Callable[[], int] | None = None,
    finished: Callable[[], bool] | None = None,
    kill_at: tuple[int, float] | None = None,
    timeout: float = 900.0,
) -> ChildRun:
    """Run the child of ``spec_file``; with ``kill_at=(n, delay)`` SIGKILL it ``delay`` s after it
    reached checkpoint ``n`` (0 = after it was ready). Polls ``ready``, ``count`` and ``finished``
    (its output is complete) every 10 ms, for the timeline. A child with ``fsize_limit`` is not
    watched: it runs to its end."""
    env = child_env()
    out_path = spec_file.with_suffix(".out")
    cmd = child_command(spec_file)
    start = time.monotonic()
    t_ready: float | None = None
    marks: list[float] = []
    t_finished: float | None = None
    killed = False
    if fsize_limit:
        # RLIMIT_FSIZE applies to every regular file the child writes: report through a pipe.
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        out_path.write_bytes(proc.stdout)
    else:
        with open(out_path, "wb") as out_file:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out_file, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                now = time.monotonic()
                if now - start > timeout:
                    proc.kill()
                    proc.wait()
                    raise RuntimeError(f"child {spec_file} ran over {timeout:.0f} s")
                if t_ready is None and ready is not None and ready():
                    t_ready = now
                if t_ready is not None and count is not None:
                    c = count()
                    while c > len(marks):
                        marks.append(now)
                if t_finished is None and finished is not None and finished():
                    t_finished = now
                if kill_at is not None and t_ready is not None:
                    n, delay = kill_at
                    base = t_ready if n == 0 else (marks[n - 1] if len(marks) >= n else None)
                    if base is not None and now >= base + delay and proc.poll() is None:
                        os.kill(proc.pid, signal.SIGKILL)  # a real SIGKILL: no cleanup runs
                        proc.wait()
                        killed = True
                        break
                time.sleep(0.01)
    ended = time.monotonic()
    ready_at = None if t_ready is None else t_ready - start
    origin = start if t_ready is None else t_ready
    output = out_path.read_text(errors="replace")
    return ChildRun(
        rc=proc.returncode,
        killed=killed,
        ready_at=ready_at,
        checkpoints=[m - origin for m in marks],
        ended_at=ended - origin,
        finished_at=None if t_finished is None else t_finished - origin,
        results=read_results(output),
        output=output,
    )
