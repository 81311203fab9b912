"""Geometry of emotion vectors, checked against human ratings.

Modules:

- ``store``: ``load_vectors`` opens the vectors rule's Zarr store as a ``VectorSet``.
- ``geometry``: PCA (thin SVD, sign convention), cosine matrix, synonym and opposite pairs.
- ``norms``: Warriner et al. (2013) valence/arousal ratings with a reviewed mapping table.
- ``stats``: Pearson/Spearman correlations with seeded bootstrap intervals (the PCA refitted in
  every resample for PC-rating correlations); Holm and Benjamini-Hochberg adjusted p-values.
- ``clustering``: valid hierarchical clustering, k by silhouette, agreement across layers.
- ``logit_lens``: tokens each vector promotes and suppresses through the final norm and head.
- ``plots``: the report's figures.
- ``run``: ``analyze`` runs all of it per layer and writes tables, figures and a summary.

Command line: ``python -m emotion_vectors.analysis VECTORS_ZARR OUT_DIR`` (see ``--help``).
"""

from .run import FILES, LENS_FILES, analyze, default_main_layer
from .store import VectorSet, VectorStoreError, load_vectors, write_vector_store

__all__ = [
    "FILES",
    "LENS_FILES",
    "VectorSet",
    "VectorStoreError",
    "analyze",
    "default_main_layer",
    "load_vectors",
    "write_vector_store",
]
