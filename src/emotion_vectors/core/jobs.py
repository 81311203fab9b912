"""Glue for Snakemake ``script:`` jobs: logging to the rule's log, threads, provenance."""

from __future__ import annotations

import logging
import sys
from typing import Any


def start_job(smk: Any, *, claim_gpus: bool = True) -> logging.Logger:
    """Send the job's stderr/stdout and logging to ``log[0]``, use ``threads`` threads, and claim
    the job's GPUs (``resources.gpu`` of them; see ``core.devices.claim_job_devices``).

    Args:
        smk: the ``snakemake`` object Snakemake gives a script.
        claim_gpus: False for a job that only talks to a model server (the activation jobs):
            the server claims its own GPU, and a job claim would make it exit.
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
    log = logging.getLogger(f"emotion_vectors.{smk.rule}")
    # A GPU job gets its own device(s) before anything touches CUDA: Snakemake's gpu resource
    # says how many GPU jobs run at once, the claim says which GPU each uses (core.devices.claim_job_devices).
    from .devices import claim_job_devices

    if claim_gpus:
        claim_job_devices(int(getattr(getattr(smk, "resources", None), "gpu", 0) or 0), log=log.info)
    import torch

    torch.set_num_threads(max(1, int(smk.threads)))
    log.info("rule %s, threads %s, output %s", smk.rule, smk.threads, list(smk.output))
    return log
