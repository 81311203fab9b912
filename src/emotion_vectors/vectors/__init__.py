"""From activation shards to emotion vectors: the vector store's layout (``store_layout``), the
vectors (``build``: emotion mean minus grand mean, neutral PCs projected out; the shuffled-label
stores), the split-half stores (``split_vectors``), and the corpus diagnostics read from the
shards (``diagnostics``: separability, variance shares, the judge's recognisability)."""
