"""Behaviour experiments: does steering with an emotion vector change what the model does?

- :mod:`.scenario`: the scenario file (the blackmail scenario: ``config/scenarios/blackmail.yaml``)
  and the prompt the subject reads;
- :mod:`.checks`: stage 1, deterministic checks of the emails actually sent;
- :mod:`.judging`: stage 2, a rubric judge (local log-probability or any chat backend), the
  two-stage classification and its validation on hand-labelled responses;
- :mod:`.run`: resumable sampling of the scenario under each steering condition;
- :mod:`.batched`: every condition sampled at once, rows of (condition, sample) per pass;
- :mod:`.stats`: rates with Wilson intervals, Fisher's tests against the baseline with Holm's
  adjustment, dose-response figures;
- :mod:`.jobs`: the workflow jobs: rule ``behaviour`` (all of the above for one scenario) and the
  judge validation rules.

See ``docs/behaviour.md``.
"""
