"""Fault battery: inject real faults into the workflow's long steps and check that they survive.

The command line of ``python -m emotion_vectors.faults`` (``make faults``; the faults are described
in the package's docstring): runs the sections asked for, prints the table, writes it with the
details to ``results/faults/faults.md`` (and ``details.json``), exits 1 if any fault was not
survived. ``_child SPEC`` runs one of the battery's child processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .battery import Battery
from .children import child_main
from .common import OUT_DIR, REPO_ROOT, _remove, ensure_default_model
from .configs import malformed_configs
from .corruption import corrupt_checkpoints, corrupt_partials
from .disk import full_disk
from .kills import kill_activations, kill_stories
from .report import details_markdown, table
from .server import server_faults


SECTIONS = ("kill-activations", "kill-stories", "corrupt", "configs", "disk", "server")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        return child_main(argv[1])
    ap = argparse.ArgumentParser(prog="python -m emotion_vectors.faults", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill points (default 0)")
    ap.add_argument("--kills", type=int, default=10, help="SIGKILLs per kill battery (default 10)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    ap.add_argument("--out", default=str(OUT_DIR), help="where faults.md, details.json and the work directory (configs, shards, servers) go; the malformed-config runs are tried in the repository's results/")
    ap.add_argument("--disk", choices=("auto", "rlimit"), default="auto",
                    help="full disk: a small tmpfs / loop mount if permitted (auto), or RLIMIT_FSIZE in the child")
    args = ap.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    os.chdir(REPO_ROOT)
    started = time.monotonic()
    out_dir = Path(args.out)
    work = out_dir / "work"
    _remove(work)
    work.mkdir(parents=True)
    ensure_default_model()
    b = Battery(args.seed, args.kills, work, disk=args.disk)
    ref_act = work / "activations" / "ref.zarr"
    ref_story = work / "stories" / "ref.json"
    if {"kill-activations", "corrupt", "disk"} & only:
        if "kill-activations" in only:
            kill_activations(b)
        else:
            ref_act.parent.mkdir(parents=True, exist_ok=True)
            b.run_child(b.extract_spec([ref_act]))
    if {"kill-stories", "corrupt", "disk"} & only:
        if "kill-stories" in only:
            kill_stories(b)
        else:
            b.run_child(b.story_spec([ref_story]))
    if "corrupt" in only:
        corrupt_partials(b, ref_act)
        corrupt_checkpoints(b, ref_story)
    if "configs" in only:
        malformed_configs(b)
    if "disk" in only:
        full_disk(b, ref_act, ref_story)
    if "server" in only:
        server_faults(b)
    elapsed = time.monotonic() - started
    text = table(b.rows)
    failed = [r for r in b.rows if r["survived"] < r["injected"]] or ([{"fault": "config controls"}] if not b.config_controls_ok else [])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "faults.md").write_text(
        f"# Fault battery\n\n`python -m emotion_vectors.faults --seed {args.seed} --kills {args.kills}"
        f"{'' if only == set(SECTIONS) else ' --only ' + ','.join(s for s in SECTIONS if s in only)}` "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {elapsed / 60:.1f} min, model {b.model['name']}, CPU, 1 thread per job)\n\n"
        + text + "\n" + details_markdown(b.details) + "\n"
    )
    (out_dir / "details.json").write_text(json.dumps({"rows": b.rows, **b.details}, indent=1, default=str))
    print()
    print(text)
    print(f"\n{len(b.rows)} faults, {sum(r['injected'] for r in b.rows)} injections in {elapsed / 60:.1f} min; "
          f"details in {out_dir / 'faults.md'}")
    if failed:
        print(f"NOT SURVIVED: {[r['fault'] for r in failed]}")
        return 1
    return 0

