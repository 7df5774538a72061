#!/usr/bin/env bash
# Submit a whole sweep to SLURM: the base model as its own job, the array of grid points chained
# on it (afterok), then the merge (afterany). Run from the repository root:
#
#   CONFIG=configs/experiments/demo.yaml OUTPUT=runs/demo scripts/slurm/submit_sweep.sh
#   # GPUs: one per point, 8 CPUs each, at most 16 points at once, site options for every job
#   CONFIG=... OUTPUT=... BASE_ARGS="--gres=gpu:1 --time=08:00:00" \
#       POINT_ARGS="--gres=gpu:1 --cpus-per-task=8 --time=04:00:00" MAX_PARALLEL=16 \
#       scripts/slurm/submit_sweep.sh -p gpu -A myacct
#
# Arguments are sbatch options given to all three jobs; BASE_ARGS, POINT_ARGS and MERGE_ARGS
# (split on spaces) go to one job each; MAX_PARALLEL (default 8) caps the running array tasks.
# VENV (default .venv) is the virtual environment holding capl. Prints the three job ids.
set -euo pipefail

CONFIG="${CONFIG:?set CONFIG to the sweep YAML, e.g. CONFIG=configs/experiments/demo.yaml}"
OUTPUT="${OUTPUT:?set OUTPUT to the sweep output folder, e.g. OUTPUT=runs/demo}"
VENV="${VENV:-.venv}"
[[ "${VENV}" = /* ]] || VENV="${PWD}/${VENV}"
export CONFIG OUTPUT VENV
HERE="$(cd "$(dirname "$0")" && pwd)"
if [[ ! -x "${VENV}/bin/capl-sweep" ]]; then
    echo "submit_sweep.sh: error: ${VENV}/bin/capl-sweep not found: set VENV to the virtual environment holding capl" >&2
    exit 2
fi

# the first line of the dry run is "<N> points"; a bad sweep file fails here, before any job
listing="$("${VENV}/bin/capl-sweep" --config "${CONFIG}" --output "${OUTPUT}" --dry-run)"
read -r N _ <<<"${listing}"
if ! [[ "${N}" =~ ^[0-9]+$ ]] || (( N == 0 )); then
    echo "submit_sweep.sh: error: ${CONFIG} has no grid points" >&2
    exit 2
fi
read -r -a base_args <<<"${BASE_ARGS:-}"
read -r -a point_args <<<"${POINT_ARGS:-}"
read -r -a merge_args <<<"${MERGE_ARGS:-}"

base=$(sbatch --parsable "$@" "${base_args[@]}" "${HERE}/sweep_base.sbatch")
array=$(sbatch --parsable "$@" "${point_args[@]}" --dependency="afterok:${base}" \
    --kill-on-invalid-dep=yes --array="0-$((N - 1))%${MAX_PARALLEL:-8}" "${HERE}/sweep_array.sbatch")
merge=$(sbatch --parsable "$@" "${merge_args[@]}" --dependency="afterany:${array}" \
    "${HERE}/sweep_merge.sbatch")
echo "submit_sweep.sh: ${N} points; base job ${base}, array job ${array}, merge job ${merge}"
