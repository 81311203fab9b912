"""Reading the subject model's residual stream: the activation engine (``extract``: one forward
pass per batch, pooling on the device), per-emotion Zarr shards (``shards``), the model server
that loads the subject once for every shard (``service``, ``serve_subject``), reading texts and
token projections through it or in process (``reading``, ``highlight``), and the logit lens's
steps through the model's head (``lens``)."""
