"""Dispatch ``python -m emotion_vectors.bench <name> [options]`` to ``emotion_vectors.bench.<name>``.

Each benchmark module exposes ``main(argv: list[str]) -> int``; modules are imported only when
asked for, so one benchmark's dependencies never slow down or break another.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "extract": "activation extraction engine vs the replication's method (tokens/s, memory)",
    "analysis": "analysis stage",
    "generate": "story generation",
    "backends": "story generation in process vs through transformers serve (stories/s, tokens/s)",
    "steering": "many steering directions per forward pass vs one at a time (continuation, generation)",
}


def _usage() -> str:
    lines = ["usage: python -m emotion_vectors.bench {" + ",".join(BENCHMARKS) + "} [options]", ""]
    lines += [f"  {name:<10} {what}" for name, what in BENCHMARKS.items()]
    lines.append("\n`python -m emotion_vectors.bench <name> --help` lists a benchmark's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark named by ``argv[0]`` with the remaining arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"emotion_vectors.bench.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"emotion_vectors.bench.{name}":
            print(f"benchmark {name!r} is not available yet (no module {err.name})", file=sys.stderr)
            return 2
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
