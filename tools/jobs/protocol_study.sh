#!/usr/bin/env bash
# The protocol search of docs/benchmarks.md ("Searching the training protocol"): the warm-start checkpoint
# (the current recipe, 14 minutes on two cores: DDP 2 x 1 thread), a study of proxy trials around the default
# model's recipe that start from it (SPACE, default configs/tune/default_model_warm.yaml; with
# SPACE=configs/tune/default_model.yaml the trials start from scratch and no checkpoint is made), its
# proxy-fidelity check at 4x the proxy budget, then the searched protocol against the current recipe at a
# full budget (60 one-core minutes each, seeds 0 and 1, from scratch), every row evaluated on the benchmarks. Resumable and idempotent: rerun the
# same command after an interruption (the study continues from its SQLite file, a cut run from its last.pt).
#
#   STATE=/root/strkit-jobs/state CORES=0,1 JOBS=2 nohup tools/jobs/protocol_study.sh > protocol_study.log 2>&1 &
#
# CORES: the CPUs it may use (taskset list); JOBS: trials / long runs trained at once (one thread each).
# PHASES (default "warm study fidelity compare") picks phases; TRIALS (30), MINUTES (5: the proxy budget),
# PRUNE_AFTER (120: seconds before the pruner's first decision) and FULL_MINUTES (60: the comparison's
# budget) size them. From scratch a proxy of 3 or 6 minutes never leaves the CTC plateau (session 10: the
# best trials read 1 and 3 of the 673 validation crops), so cold proxies rank noise. The comparison runs JOBS rows at a time; equal budgets
# are wall-clock minutes, so compared rows should share the machine's load (run them JOBS=2 side by side).
JOB=tune
# shellcheck source=tools/jobs/common.sh
source "$(dirname "$0")/common.sh"
CORES=${CORES:-$CORE}
JOBS=${JOBS:-1}
PHASES=${PHASES:-warm study fidelity compare}
SPACE=${SPACE:-configs/tune/default_model_warm.yaml}
OUT=runs/tune/$(basename "$SPACE" .yaml)
WARM=runs/tune/warm
synth clean 40000 7 synth_clean_40k
synth mjsynth 119000 1 synth_mj_119k
on() { taskset -c "$CORES" "$@"; }
has() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if has warm && grep -q "init_from=$WARM/last.pt" "$SPACE" && [ ! -f "$WARM.done" ]; then
  r=; [ -f "$WARM/last.pt" ] && r=--resume
  OMP_NUM_THREADS=1 on python -m torch.distributed.run --nproc_per_node 2 tools/train.py \
    configs/train/default_model.yaml train.threads=1 train.batch_size=16 data.workers=1 train.max_minutes=14 \
    train.val_every=1000 train.progress=false train.tensorboard=false train.out_dir="$WARM" $r \
    && touch "$WARM.done" || exit 1
fi
if has study; then
  on python tools/tune.py run "$SPACE" --out "$OUT" --trials "${TRIALS:-30}" \
    --minutes "${MINUTES:-5}" --min-resource "${PRUNE_AFTER:-120}" --jobs "$JOBS" --threads "$JOBS" || exit 1
fi
if has fidelity; then
  on python tools/tune.py fidelity "$OUT" --factor 4 --top 5 --random 2 --jobs "$JOBS" --threads 1 || exit 1
fi
row() {  # name seed [--protocol FILE]: FULL_MINUTES of training, then the benchmarks
  local name=$1 seed=$2 out=runs/tune/compare/$1; shift 2
  if [ ! -f "$out.done" ]; then
    local r=; [ -f "$out/last.pt" ] && r=--resume
    /usr/bin/time -f "$name wall %e s, peak RSS %M KB" taskset -c "$CORES" python tools/train.py configs/train/default_model.yaml \
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
