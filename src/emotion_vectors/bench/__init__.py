"""Benchmarks: ``python -m emotion_vectors.bench extract|analysis|generate [options]``."""
