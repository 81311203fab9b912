"""Reading emotion in real text with the vectors: corpora of real text (``corpora``), scoring
texts (``score``: ``python -m emotion_vectors.reading.score``), the checks against labels and
across corpora (``text_checks``), the validation battery (``battery``), and what they share
(``common``)."""
