"""``python -m emotion_vectors.faults``: the fault battery (see the package's docstring)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
