#!/usr/bin/env bash
# The protocol search of docs/benchmarks.md ("Searching the training protocol"): a study of proxy trials
# around the default model's recipe (configs/tune/default_model.yaml), its proxy-fidelity check at 4x the
# proxy budget, then the searched protocol against the current recipe at a full budget (60 one-core
# minutes each, seeds 0 and 1), every row evaluated on the benchmarks. Resumable and idempotent: rerun the
# same command after an interruption (the study continues from its SQLite file, a cut run from its last.pt).
#
#   STATE=/root/strkit-jobs/state CORES=0,1 JOBS=2 nohup tools/jobs/protocol_study.sh > protocol_study.log 2>&1 &
#
# CORES: the CPUs it may use (taskset list); JOBS: trials / long runs trained at once (one thread each).
# PHASES (default "study fidelity compare") picks phases; TRIALS (30), MINUTES (6: the proxy budget),
# PRUNE_AFTER (180: seconds before the pruner's first decision) and FULL_MINUTES (60: the comparison's
# budget) size them. A 3-minute proxy is too short: no trial of a first study (session 10) left the CTC
# plateau in it (validation 0 % in 9 of 10 trials), so its ranking was noise. The comparison runs JOBS rows at a time; equal budgets
# are wall-clock minutes, so compared rows should share the machine's load (run them JOBS=2 side by side).
JOB=tune
# shellcheck source=tools/jobs/common.sh
source "$(dirname "$0")/common.sh"
CORES=${CORES:-$CORE}
JOBS=${JOBS:-1}
PHASES=${PHASES:-study fidelity compare}
OUT=runs/tune/default_model
synth clean 40000 7 synth_clean_40k
synth mjsynth 119000 1 synth_mj_119k
on() { taskset -c "$CORES" "$@"; }
has() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if has study; then
  on python tools/tune.py run configs/tune/default_model.yaml --out "$OUT" --trials "${TRIALS:-30}" \
    --minutes "${MINUTES:-6}" --min-resource "${PRUNE_AFTER:-180}" --jobs "$JOBS" --threads "$JOBS" || exit 1
fi
if has fidelity; then
  on python tools/tune.py fidelity "$OUT" --factor 4 --top 5 --random 2 --jobs "$JOBS" --threads 1 || exit 1
fi
row() {  # name seed [--protocol FILE]: FULL_MINUTES of training, then the benchmarks
  local name=$1 seed=$2 out=runs/tune/compare/$1; shift 2
  if [ ! -f "$out.done" ]; then
    local r=; [ -f "$out/last.pt" ] && r=--resume
    /usr/bin/time -f "$name wall %e s, peak RSS %M KB" on python tools/train.py configs/train/default_model.yaml \
      "$@" train.max_minutes="${FULL_MINUTES:-60}" train.seed="$seed" train.val_every=1000 train.progress=false \
      train.out_dir="$out" $r && touch "$out.done"
  fi
  if [ -f "$out.done" ] && [ ! -f "$out/eval.done" ]; then
    on python tools/eval.py "$out/best.pt" --threads 1 --no-speed --no-progress --out "$out/eval" \
      && touch "$out/eval.done"
  fi
}
if has compare; then
  [ -f "$OUT/best.yaml" ] || { echo "no $OUT/best.yaml: run the study phase first" >&2; exit 2; }
  # a frozen copy of the protocol the rows train, so a continued study cannot change it under them
  [ -f runs/tune/compare/protocol.yaml ] || { mkdir -p runs/tune/compare && cp "$OUT/best.yaml" runs/tune/compare/protocol.yaml; }
  for seed in 0 1; do
    row "current_s$seed" "$seed" &
    [ "$JOBS" -gt 1 ] || wait
    row "tuned_s$seed" "$seed" --protocol runs/tune/compare/protocol.yaml &
    wait
  done
fi
