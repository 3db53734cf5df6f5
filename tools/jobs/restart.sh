#!/usr/bin/env bash
# First thing in a session: put the carried state back (tools/jobs/carry.py), render the synthetic LMDBs the
# jobs read when the machine lacks them (on both cores, before any job starts, so no two jobs render the
# same one), then start every long job of carry/jobs.txt where it stopped: one background chain per core,
# the jobs of a core one after the other, each from the git worktree of its own fixed commit.
#
#   STATE=/root/strkit-jobs/state tools/jobs/restart.sh        # from the main checkout; returns at once
#   STATE=... DRY_RUN=1 tools/jobs/restart.sh                   # print what it would do; do nothing
#
# carry/jobs.txt, one entry per line ('#' comments):
#   render PRESET COUNT SEED NAME          an LMDB of data_lmdb/ (rendered from the first job's worktree)
#   job CORE COMMIT [VAR=value ...] SCRIPT  a long job (tools/jobs/*.sh), idempotent and resumable
# Logs: $STATE/core<N>.log per chain, $STATE/restart.log for the restore and the renders.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${STATE:?set STATE to the folder outside the work tree that holds the jobs data and runs}
JOBS=${JOBS:-$REPO/carry/jobs.txt}
ROOT=$(dirname "$STATE")
[ -f "$JOBS" ] || { echo "restart: $JOBS not found (list the jobs there, see this script's header)" >&2; exit 2; }
[ "${DRY_RUN:-0}" = 1 ] || mkdir -p "$STATE/data_lmdb" "$STATE/runs"
run() { if [ "${DRY_RUN:-0}" = 1 ]; then echo "would run: $*"; else "$@"; fi; }

worktree() {  # commit -> path of its worktree, made when missing or left dangling by a newly laid work tree
  local tree="$ROOT/tree-${1:0:10}"  # (not in a dry run); the job's common.sh links data_lmdb, runs and shared
  if [ "${DRY_RUN:-0}" = 1 ]; then echo "$tree"; return; fi
  if ! git -C "$tree" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$REPO" worktree prune
    rm -rf "$tree"
    git -C "$REPO" worktree add -q --detach "$tree" "$1" >&2 || exit 2
  fi
  echo "$tree"
}

if [ -d "$REPO/carry" ]; then
  run python "$REPO/tools/jobs/carry.py" restore "$REPO/carry" "$STATE/runs"
fi
if command -v dpkg-query >/dev/null && ! dpkg-query -W fonts-aenigma >/dev/null 2>&1; then
  run "$REPO/tools/install_fonts.sh" 2>&1 | if [ "${DRY_RUN:-0}" = 1 ]; then cat; else cat >> "$STATE/restart.log"; fi
  [ "${PIPESTATUS[0]}" = 0 ] || {
    echo "restart: the recommended fonts did not install (see $STATE/restart.log); run sudo tools/install_fonts.sh" >&2
    exit 2; }
fi

first_commit=$(awk '$1 == "job" {print $3; exit}' "$JOBS")
[ -n "$first_commit" ] || { echo "restart: $JOBS lists no job" >&2; exit 2; }
tree=$(worktree "$first_commit") || exit 2
while read -r kind preset count seed name _; do
  [ "$kind" = render ] || continue
  [ -f "$STATE/data_lmdb/$name/data.mdb" ] && continue
  if [ "${DRY_RUN:-0}" = 1 ]; then echo "would render: $preset $count seed $seed -> $name"; continue; fi
  r=; [ -d "$STATE/data_lmdb/$name.partial" ] && r=--resume
  (cd "$tree" && OMP_NUM_THREADS=1 PYTHONPATH="$tree" python tools/synth.py --preset "$preset" --count "$count" \
     --workers 2 --seed "$seed" --out "$STATE/data_lmdb/$name" --no-progress $r) >> "$STATE/restart.log" 2>&1 || {
    echo "restart: rendering $name failed (see $STATE/restart.log)" >&2; exit 2; }
done < <(sed 's/#.*//' "$JOBS")

for core in $(awk '$1 == "job" {print $2}' "$JOBS" | sort -u); do
  chain=""
  while read -r kind c commit rest; do
    [ "$kind" = job ] && [ "$c" = "$core" ] || continue
    tree=$(worktree "$commit") || exit 2
    chain+="cd '$tree' && env STATE='$STATE' CORE=$core $rest; "
  done < <(sed 's/#.*//' "$JOBS")
  if [ "${DRY_RUN:-0}" = 1 ]; then echo "core $core: $chain"; continue; fi
  setsid nohup bash -c "$chain" >> "$STATE/core$core.log" 2>&1 < /dev/null &
  echo "core $core: started (log $STATE/core$core.log)"
done
