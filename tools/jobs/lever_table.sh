#!/usr/bin/env bash
# The equal-budget rows of the table (docs/benchmarks.md, "Learning more per CPU-hour"): the default
# model's architecture on the curriculum data, every row 12,000 steps x 32 on one core, then evaluated.
# Resumable and idempotent: run it again after an interruption and it continues where it stopped.
#
#   STATE=/root/strkit-jobs/state COMMIT=<sha> nohup tools/jobs/lever_table.sh > lever_table.log 2>&1 &
#
# STATE (outside the work tree) holds the data LMDBs, the teacher cache and the runs; the rows train from a
# git worktree of COMMIT (default: HEAD) at $STATE/../tree-<sha>, so later commits do not change a running
# row. CORE (default 1) is the CPU the rows are pinned to. ROWS (default: all) picks rows by name.
JOB=lever_table
# shellcheck source=tools/jobs/common.sh
source "$(dirname "$0")/common.sh"
synth clean 40000 7 synth_clean_40k
synth mjsynth 119000 1 synth_mj_119k
case " ${ROWS:-all} " in *" all "*|*" realistic12k_s0 "*) synth realistic 119000 1 synth_realistic_119k ;; esac
REAL="distill.sources=[IIIT5K_train,SVT_train,IC15_train]"
row() {  # name seed overrides...
  name=$1; seed=$2; shift 2
  case " ${ROWS:-all} " in *" all "*|*" $name "*) ;; *) return ;; esac
  out=runs/lever_table/$name
  if [ ! -f "$out.done" ]; then
    r=; [ -f "$out/last.pt" ] && r=--resume
    /usr/bin/time -f "$name wall %e s, peak RSS %M KB" taskset -c "$CORE" python tools/train.py \
      configs/train/default_model.yaml train.steps=12000 train.seed="$seed" train.val_every=500 \
      train.progress=false train.out_dir="$out" "$@" $r && touch "$out.done"
  fi
  if [ -f "$out.done" ] && [ ! -f "$out/eval.done" ]; then
    pinned python tools/eval.py "$out/best.pt" --threads 1 --no-speed && touch "$out/eval.done"
  fi
}
row current12k_s1 1
row distill12k_s0 0 distill.teacher=rapidocr distill.bag_weight=1.0 distill.sequence_weight=0.5 "$REAL" \
  distill.cache=data_lmdb/teacher_cache/rapidocr-36
row current12k_s0 0
row randaug12k_s0 0 data.augment=randaug "data.augment_options={n: 2, m: 5}"
row h48_12k_s0 0 data.img_h=48
row concat12k_s0 0 "data.train.2.concat_p=0.2" "data.train.4.concat_p=0.2"
row realistic12k_s0 0 "data.train.1.path=data_lmdb/synth_realistic_119k"
# equal time for the 48-pixel row: it trains at about 151 images/s against 243-298 at 32 pixels
row h48_7k_s0 0 data.img_h=48 train.steps=7000
# the teacher-filtered mjsynth LMDB (python tools/curate.py filter data_lmdb/synth_mj_119k data_lmdb/synth_mj_119k_filtered)
row filtered12k_s0 0 "data.train.1.path=data_lmdb/synth_mj_119k_filtered"
# the levers together (session 9): randaug + crop concatenation + the teacher-filtered mjsynth, two seeds
COMBINED=(data.augment=randaug "data.augment_options={n: 2, m: 5}" "data.train.2.concat_p=0.2"
          "data.train.4.concat_p=0.2" "data.train.1.path=data_lmdb/synth_mj_119k_filtered")
row combined12k_s0 0 "${COMBINED[@]}"
row combined12k_s1 1 "${COMBINED[@]}"
# a TPS rectifier in front of the default model (kept at the identity for the clean warm-up), for #22's
# "a rectifier where it pays": scored on the benchmarks and on rendered curved / perspective text
row tps12k_s0 0 "model.rectifier={name: tps, num_fiducial: 20, loc_channels: [64, 128, 256, 512], loc_hidden: 256}" \
  "train.freeze={rectifier.: 1200}"
