#!/usr/bin/env bash
# Default model v2's campaign (docs/model_card.md): the campaign data, then the long training run of the
# backbone the wide latency-aware search found (configs/archs/mbv2_cpu_wide_t7ms.json, committed; SEARCH=1
# runs that search again first and trains what it finds), on one core, in resumable pieces. Run it again
# after an interruption and it continues where it stopped (each phase resumes from its own last.pt).
#
#   STATE=/root/strkit-jobs/state COMMIT=<sha> nohup tools/jobs/campaign_v2.sh > campaign_v2.log 2>&1 &
#
# STATE (outside the work tree) holds the data LMDBs and the runs (runs/campaign_v2/{search,train}); the
# phases run from a git worktree of COMMIT (default HEAD) at $STATE/../tree-<sha>, so later commits do not
# change a running phase. A later piece may use a later COMMIT (same configs): the run resumes from its
# last.pt and its config. CORE (default 1) is the CPU it is pinned to.
JOB=campaign_v2
# shellcheck source=tools/jobs/common.sh
source "$(dirname "$0")/common.sh"
synth clean 40000 7 synth_clean_40k
synth mjsynth 119000 1 synth_mj_119k
synth realistic 400000 3 synth_realistic_400k
OUT=runs/campaign_v2
ARCH=configs/archs/mbv2_cpu_wide_t7ms.json
if [ "${SEARCH:-0}" = 1 ] && [ ! -f "$OUT/search.done" ]; then
  r=; [ -f "$OUT/search/last.pt" ] && r=--resume
  /usr/bin/time -f "search wall %e s, peak RSS %M KB" taskset -c "$CORE" python tools/search.py run \
    configs/search/mbv2_cpu_wide.yaml train.threads=1 data.workers=1 train.progress=false \
    train.out_dir="$OUT/search" $r && touch "$OUT/search.done"
fi
if [ "${SEARCH:-0}" = 1 ]; then [ -f "$OUT/search.done" ] || exit 1; ARCH=$OUT/search/arch.json; fi
if [ ! -f "$OUT/train.done" ]; then
  r=; [ -f "$OUT/train/last.pt" ] && r=--resume
  /usr/bin/time -f "train wall %e s, peak RSS %M KB" taskset -c "$CORE" python tools/train.py configs/train/default_v2.yaml \
    model.backbone.arch="$ARCH" train.out_dir="$OUT/train" $r && touch "$OUT/train.done"
fi
