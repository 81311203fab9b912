"""What every stage builds on: the run's configuration (``config``, ``layers``), the models
(``models``), provenance records (``provenance``), a Snakemake job's start (``jobs``), claims and
their tests (``claims``, ``stats``), and small shared helpers (``common``: seeds, names, atomic
JSON writes). Nothing here imports a stage above it."""
