# Sourced by the long-job scripts of tools/jobs: a worktree of a fixed commit outside the work tree, with the
# job's data and runs in STATE, and the synthetic LMDBs made (resumably) when missing.
#
# Start a job from its worktree's copy (cd $STATE/../tree-<sha> && tools/jobs/JOB.sh), or never edit the
# script while it runs: bash reads a script as it goes, so an edited script breaks the running job.
# In: STATE (required), CORE (default 1), COMMIT (default HEAD), JOB (the runs subfolder).
# Out: REPO, TREE, cd "$TREE", single-threaded environment with PYTHONPATH=$TREE; functions pinned, synth.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${STATE:?set STATE to a folder outside the work tree}
CORE=${CORE:-1}
COMMIT=$(git -C "$REPO" rev-parse "${COMMIT:-HEAD}")
TREE="$(dirname "$STATE")/tree-${COMMIT:0:10}"
mkdir -p "$STATE/data_lmdb" "$STATE/runs/$JOB"
[ -d "$TREE" ] || git -C "$REPO" worktree add --detach "$TREE" "$COMMIT"
ln -sfn "$STATE/data_lmdb" "$TREE/data_lmdb"; ln -sfn "$STATE/runs" "$TREE/runs"
[ -e "$(dirname "$TREE")/shared" ] || ln -sfn "$(cd "$REPO/.." && pwd)/shared" "$(dirname "$TREE")/shared"
cd "$TREE" || exit 1
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH="$TREE"

pinned() { taskset -c "$CORE" "$@"; }

synth() {  # preset count seed name: data_lmdb/NAME, resumed from NAME.partial after an interruption
  [ -f "data_lmdb/$4/data.mdb" ] && return
  # the recorded rows were rendered with the recommended fonts: without them the data is not the same
  if command -v dpkg-query >/dev/null && ! dpkg-query -W fonts-aenigma >/dev/null 2>&1; then
    echo "synth $4: the recommended fonts are not installed; run sudo tools/install_fonts.sh first" >&2
    exit 2
  fi
  local r=; [ -d "data_lmdb/$4.partial" ] && r=--resume
  pinned python tools/synth.py --preset "$1" --count "$2" --workers 1 --seed "$3" --out "data_lmdb/$4" --no-progress $r
}
