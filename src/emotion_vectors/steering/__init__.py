"""Does adding an emotion vector steer the model? Steering hooks and sampling (``steer``), the
evidence on words and continuations (``evaluate``) and on replies (``scores``), the valence
readout of the vectors (``readout``), steering vectors for other tools (``export``), and the
behaviour experiments (``behaviour``)."""
