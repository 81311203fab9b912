"""The Slurm profile as Snakemake reads it (YTE template, both sizes); docs/cluster.md.

The end-to-end proof is `make slurm-demo` on a real one-node Slurm (needs root and Debian's
slurm-wlm, so not part of the test suite); these checks keep the profile's structure honest.
"""

import pytest
from snakemake.profiles import ProfileConfigFileParser

from emotion_vectors.core.config import REPO_ROOT

SLURM = REPO_ROOT / "profiles" / "slurm" / "config.yaml"


def _parse(monkeypatch, size):
    if size is None:
        monkeypatch.delenv("EMOTION_VECTORS_SLURM_SIZE", raising=False)
    else:
        monkeypatch.setenv("EMOTION_VECTORS_SLURM_SIZE", size)
    with open(SLURM) as fh:
        return ProfileConfigFileParser().parse(fh)


def _set_resources(parsed):
    out = {}
    for item in parsed["set-resources"]:
        rule, rest = item.split(":", 1)
        key, value = rest.split("=", 1)
        out.setdefault(rule, {})[key] = value
    return out


@pytest.mark.parametrize("size", [None, "tiny"])
def test_slurm_profile(monkeypatch, size):
    parsed = _parse(monkeypatch, size)
    assert parsed["executor"] == "slurm"
    res = _set_resources(parsed)
    # GPUs come from the rules' gpu resource (--gpus by the plugin), never added by hand
    assert not any("slurm_extra" in r or "gpu" in r for r in res.values())
    # the activation jobs: one group job, members in the batch step, sized as one after another
    assert parsed["groups"] == ["activations=extract", "neutral_activations=extract"]
    assert parsed["resources"] == ["subject_server=1"] and parsed["set-resource-scopes"] == ["subject_server=local"]
    for rule in ("activations", "neutral_activations"):
        assert res[rule]["subject_server"] == "1" and res[rule]["mpi"] == "0"
    mem = int(res["stories"]["mem_mb"])
    assert mem == (96000 if size is None else 3000)
    assert all(int(r.get("runtime", 1)) > 0 for r in res.values())
