#!/usr/bin/env bash
# `make slurm-demo`: the tiny config (tests/data/tiny.yaml) end to end through the Snakemake
# SLURM executor (--profile profiles/slurm) on the one-node Slurm of local-cluster.sh.
# Needs root (it starts the cluster).  Prints the Snakemake summary, the Slurm jobs (sacct) and
# how often the subject model was loaded; keeps everything in results/<run>/slurm-demo/.
#   RUN=slurm-tiny (results/<run>)   PROFILE=profiles/slurm   KEEP=1 (do not start from scratch)
#   TAG=x (write results/<run>/slurm-demo-x/)   PYTHONPATH=<copy of src> (freeze the code the jobs run)
#   extra arguments go to snakemake (e.g. --forcerun activations neutral_activations)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-slurm-tiny}
PROFILE=${PROFILE:-profiles/slurm}
OUT=results/$RUN/slurm-demo${TAG:+-$TAG}
scripts/slurm/local-cluster.sh up >/dev/null
eval "$(scripts/slurm/local-cluster.sh env)"
export EMOTION_VECTORS_SLURM_SIZE=tiny
[ "${KEEP:-0}" = 1 ] || rm -rf "results/$RUN"
mkdir -p "$OUT"
since=$(date +%Y-%m-%dT%H:%M:%S)
t0=$(date +%s)
set +e
.venv/bin/snakemake --profile "$PROFILE" --configfile tests/data/tiny.yaml --config "run=$RUN" "$@" \
    >"$OUT/snakemake.log" 2>&1
rc=$?
t1=$(date +%s)
{
    echo "== snakemake --profile $PROFILE --configfile tests/data/tiny.yaml --config run=$RUN $* (exit $rc, $((t1 - t0)) s)"
    sed -n '/^Job stats:/,/^total/p' "$OUT/snakemake.log" | head -30
    grep -E "steps \([0-9]+%\) done|Complete log" "$OUT/snakemake.log" | tail -2
    echo "== sacct (jobs since $since)"
    sacct -X --starttime "$since" --format=JobID,Comment%60,AllocCPUS,ReqMem,AllocTRES%32,State,Elapsed
    echo "== subject model loads since $since (model server logs)"
    logs=$(find "results/$RUN/activations/.server" -name '*.log' 2>/dev/null)
    # shellcheck disable=SC2086
    loads=$(cat $logs /dev/null | awk -v t="${since/T/ }" 'substr($0, 1, 19) >= t && /loaded in/' )
    echo "$loads" | sed 's/^/  /'
    echo "loads: $(printf '%s' "$loads" | grep -c 'loaded in')"
    echo "== activation jobs: which server answered (provenance.server of each shard)"
    for shard in results/$RUN/activations/emotions/*.zarr results/$RUN/activations/neutral.zarr; do
        [ -e "$shard" ] || continue
        .venv/bin/python -c "import sys, zarr; s = zarr.open_group(sys.argv[1], mode='r'); p = dict(s.attrs)['provenance']['server']; print(f'  {sys.argv[1]}: server pid {p[\"pid\"]}')" "$shard" 2>/dev/null || true
    done
} | tee "$OUT/summary.txt"
exit $rc
