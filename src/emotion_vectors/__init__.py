"""emotion-vectors: emotion concepts in a language model's residual stream.

One subpackage per stage of the workflow, lowest first; a stage imports only from itself and the
stages before it (``tests/test_layout.py``):

- ``core``: the run's configuration, models, provenance, a job's start, claims and their tests,
  and the model servers' private files, protocol and GPU claims.
- ``corpus``: the stories and neutral dialogues (chat backends, generation, parsing, the leak
  filter, the validated judge, the NRC lexicon).
- ``extraction``: the activation engine, Zarr activation shards, the subject-model server, reading
  texts and tokens through it.
- ``vectors``: emotion vectors (emotion mean - grand mean, neutral PCs projected out), their store,
  split halves, and the corpus diagnostics.
- ``analysis``: geometry of the vectors, human ratings, clustering, logit lens, comparison of
  subjects.
- ``steering``: steering with the vectors, its evidence and scores, the valence readout, export,
  the behaviour experiments.
- ``reading``: reading emotion in real text (corpora, scoring, checks, the validation battery).

``findings`` (every stage's claims in one table), ``faults`` (the fault battery) and ``bench``
(benchmarks) sit on top and may use any stage. Each stage's ``jobs`` module holds the jobs that
the workflow's scripts start.
"""

__version__ = "0.1.0"
