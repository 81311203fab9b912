"""emotion-vectors: emotion concepts in a language model's residual stream.

One module per stage of the workflow:

- ``config``: load and validate a run's configuration (JSON Schema, defaults filled).
- ``models``: load generator and subject models (hub id or local path, dtype, quantization),
  and prepare the packaged default models once into local safetensors copies.
- ``prompts``, ``parsing``, ``leak``: build generator prompts, split replies into stories or
  dialogue turns, reject stories that name their emotion.
- ``generate``: batched, seeded generation of the story and neutral corpora.
- ``extract``: the activation engine (one forward pass per batch, pooling on the device).
- ``shards``: per-emotion Zarr activation shards, written resumably and atomically.
- ``vectors``: emotion vectors (emotion mean - grand mean, neutral PCs projected out).
- ``analysis``: geometry of the vectors, human ratings, clustering, logit lens.
- ``provenance``: what produced every artifact.
"""

__version__ = "0.1.0"
