"""Benchmark of the analysis stage: ``python -m emotion_vectors.bench analysis``.

Builds a vector store of the full study's shape (171 emotions x 60 layers x 5376 dims by
default) in a temporary directory, then runs ``python -m emotion_vectors.analysis`` on it in a
child process and prints its wall time and peak resident memory (the child's
``ru_maxrss``; the store building is not counted).

Synthetic vectors: with ``--source reference`` (default when the reference npz is found) each
layer is the published layer-40 matrix scaled by a depth factor plus Gaussian noise whose share
falls with depth, so every layer has realistic structure and the layers differ; with
``--source random`` a rank-8 Gaussian model plus noise.

The store is built in a separate child process, and each child's peak RSS is read from its own
``wait4`` resource usage, so the figure is the analysis process's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REFERENCE = "gemma4-31b-it_layer40_emotion_vectors.npz"


def find_reference() -> Path | None:
    """The reference npz in ``../shared/reference`` beside the repository, if present."""
    root = Path(__file__).resolve().parents[3]
    for base in (root.parent / "shared" / "reference", root / "shared" / "reference"):
        if (base / REFERENCE).exists():
            return base / REFERENCE
    return None


def synthetic_vectors(
    n_emotions: int, n_layers: int, d: int, *, source: str = "reference", seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Synthetic ``(n_emotions, n_layers, d)`` float32 vectors and emotion names (see module)."""
    rng = np.random.default_rng(seed)
    ref_path = find_reference() if source == "reference" else None
    if source == "reference" and ref_path is None:
        raise FileNotFoundError(f"--source reference: {REFERENCE} not found beside the repo")
    if ref_path is not None:
        data = np.load(ref_path)
        names = sorted(data.keys())
        base = np.stack([data[e] for e in names]).astype(np.float32)
        reps = -(-n_emotions // base.shape[0])
        base = np.concatenate([base] * reps)[:n_emotions]
        names = [f"{e}" if r == 0 else f"{e}_{r}" for r in range(reps) for e in names][:n_emotions]
        if d != base.shape[1]:
            cols = rng.integers(0, base.shape[1], size=d)
            base = base[:, cols]
    else:
        names = [f"emotion{i:03d}" for i in range(n_emotions)]
        latent = rng.standard_normal((n_emotions, 8)).astype(np.float32)
        base = latent @ rng.standard_normal((8, d)).astype(np.float32) / np.sqrt(8)
    scale = float(np.linalg.norm(base, axis=1).mean())
    out = np.empty((n_emotions, n_layers, d), dtype=np.float32)
    for layer in range(n_layers):
        depth = (layer + 1) / n_layers
        noise = rng.standard_normal((n_emotions, d)).astype(np.float32)
        noise *= (1.2 - depth) * scale / np.sqrt(d)
        out[:, layer, :] = (0.5 + depth) * base + noise
    return out, names


def _run_measured(cmd: list[str], env: dict[str, str], log_path: Path) -> tuple[int, float, float]:
    """Run ``cmd``; return (exit code, wall seconds, peak RSS MiB of that child alone)."""
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_maxrss / 1024


def build_store(path: str, n_emotions: int, n_layers: int, d: int, source: str, seed: int) -> None:
    """Write the synthetic store (run in a child process by ``main``)."""
    from emotion_vectors.analysis.store import write_vector_store

    vectors, names = synthetic_vectors(n_emotions, n_layers, d, source=source, seed=seed)
    write_vector_store(path, vectors, names, list(range(n_layers)), chunk_layers=1)


def main(argv: list[str]) -> int:
    """Build the synthetic store, time the analysis in a child process; 0 if within limits."""
    p = argparse.ArgumentParser(prog="python -m emotion_vectors.bench analysis",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--n-emotions", type=int, default=171)
    p.add_argument("--n-layers", type=int, default=60)
    p.add_argument("--d", type=int, default=5376)
    p.add_argument("--n-bootstrap", type=int, default=1000)
    p.add_argument("--source", choices=("reference", "random"), default=None,
                   help="default: reference if the npz is found, else random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="keep the store and outputs here")
    p.add_argument("--max-rss-mb", type=float, default=4000.0)
    p.add_argument("--max-wall-s", type=float, default=None)
    args = p.parse_args(argv)
    source = args.source or ("reference" if find_reference() else "random")

    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store, out = work / "vectors.zarr", work / "analysis"
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
        build = [sys.executable, "-c",
                 "import sys; from emotion_vectors.bench.analysis import build_store; "
                 "a = sys.argv; build_store(a[1], *map(int, a[2:5]), a[5], int(a[6]))",
                 str(store), str(args.n_emotions), str(args.n_layers), str(args.d), source,
                 str(args.seed)]
        rc, build_s, _ = _run_measured(build, env, work / "build.log")
        if rc != 0:
            sys.stderr.write((work / "build.log").read_text()[-4000:])
            return rc
        cmd = [sys.executable, "-m", "emotion_vectors.analysis", str(store), str(out),
               "--n-bootstrap", str(args.n_bootstrap), "--seed", str(args.seed)]
        rc, wall, peak_mb = _run_measured(cmd, env, work / "analysis.log")
        if rc != 0:
            sys.stderr.write((work / "analysis.log").read_text()[-4000:])
            print(f"analysis failed with exit code {rc}", file=sys.stderr)
            return rc
        stage = json.loads((out / "summary.json").read_text())["timings_s"]
    shape = f"{args.n_emotions} emotions x {args.n_layers} layers x {args.d} dims"
    print(f"analysis benchmark ({source} vectors, {shape}, {args.n_bootstrap} bootstrap "
          f"resamples, 1 thread)")
    print(f"  store build (not counted): {build_s:.1f} s")
    print(f"  wall time: {wall:.1f} s   peak RSS: {peak_mb:.0f} MiB")
    print("  stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stage.items()))
    print(json.dumps({"wall_s": round(wall, 2), "peak_rss_mib": round(peak_mb, 1),
                      "shape": [args.n_emotions, args.n_layers, args.d], "source": source,
                      "stages_s": stage}))
    ok = peak_mb <= args.max_rss_mb and (args.max_wall_s is None or wall <= args.max_wall_s)
    if not ok:
        print("benchmark limits exceeded", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
