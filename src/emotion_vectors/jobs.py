"""Glue for Snakemake ``script:`` jobs: logging to the rule's log, threads, provenance."""

from __future__ import annotations

import logging
import sys
from typing import Any


def start_job(smk: Any) -> logging.Logger:
    """Send the job's stderr/stdout and logging to ``log[0]``, and use ``threads`` threads.

    Args:
        smk: the ``snakemake`` object Snakemake gives a script.
    """
    if smk.log:
        fh = open(smk.log[0], "a", buffering=1, encoding="utf-8")
        sys.stderr = fh
        sys.stdout = fh
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    import torch

    torch.set_num_threads(max(1, int(smk.threads)))
    log = logging.getLogger(f"emotion_vectors.{smk.rule}")
    log.info("rule %s, threads %s, output %s", smk.rule, smk.threads, list(smk.output))
    return log
