#!/usr/bin/env bash
# "Does the search pay at a real budget" (docs/benchmarks.md): the wide search's backbone against fixed
# MobileNetV2 baselines of the same space, each trained with the default-model v2 campaign's recipe
# (configs/train/default_v2.yaml: data, 94 classes, BiLSTM 192, AdamW one-cycle) for STEPS (16,000) steps
# of batch 32 on one core, about 2.2 one-core hours at the 66 images/s the campaign trains at (session 12); a step count,
# not a wall-clock budget, so that every row gets the same training compute whatever else the machine runs;
# then the benchmarks under the 36/62/94 protocols and the measured batch-1 latency of each trained network
# (ONNX Runtime and PyTorch, one thread).
#
# The baselines (python tools/search.py fixed configs/search/mbv2_cpu_wide.yaml --op OP prints their costs):
#   searched (configs/archs/mbv2_cpu_wide_t7ms.json): 1.093 M searched-part parameters, latency table 6.63 ms
#   every cell k5_e3: 1.070 M, 6.82 ms   (the equal-parameter one, and of about equal latency)
#   every cell k3_e3: 1.019 M, 6.86 ms   (the best fixed network of the 3,000-step table, equal latency)
#
#   STATE=/root/strkit-jobs/state CORE=0 nohup tools/jobs/search_pays.sh > search_pays.log 2>&1 &
#
# Resumable: rerun it and each row continues from its last.pt. ROWS (default all) picks rows by name,
# separated by commas (ROWS=searched_s1,fixed_k3_e3_s1: the second seed of the searched and k3_e3 rows, which
# run only when named).
JOB=search_pays
# shellcheck source=tools/jobs/common.sh
source "$(dirname "$0")/common.sh"
synth clean 40000 7 synth_clean_40k
synth mjsynth 119000 1 synth_mj_119k
synth realistic 400000 3 synth_realistic_400k
SETS="IIIT5K_3000 SVT_647 IC13_857 IC13_1015 IC15_2077"
row() {  # name arch [seed: a row of another seed than 0 runs only when ROWS names it]
  local name=$1 arch=$2 seed=${3:-0} out=runs/search_pays/$1 rows=",${ROWS:-all},"
  case "${rows// /,}" in *",$name,"*) ;; *",all,"*) [ "$seed" = 0 ] || return ;; *) return ;; esac
  if [ ! -f "$out.done" ]; then
    local r=; [ -f "$out/last.pt" ] && r=--resume
    /usr/bin/time -f "$name wall %e s, peak RSS %M KB" taskset -c "$CORE" python tools/train.py configs/train/default_v2.yaml \
      model.backbone.arch="$arch" train.steps="${STEPS:-16000}" train.max_minutes=0 train.snapshot_every=0 train.val_every=1000 \
      train.seed="$seed" train.out_dir="$out" $r && touch "$out.done"
  fi
  if [ -f "$out.done" ] && [ ! -f "$out/eval.done" ]; then
    pinned python tools/eval.py "$out/best.pt" --benchmarks $SETS --protocol 36 62 94 --threads 1 --no-speed \
      --no-progress --out "$out/eval" && touch "$out/eval.done"
  fi
  if [ -f "$out/eval.done" ] && [ ! -f "$out/speed.json" ]; then
    pinned python tools/bench.py infer --models "$out/best.pt" --backend torch onnxruntime --precision fp32 \
      --channels-last on --threads 1 --repeats 200 --batch-repeats 5 --img-w 128 --max-busy 2 --json "$out/speed.json"
  fi
}
row searched configs/archs/mbv2_cpu_wide_t7ms.json
row fixed_k5_e3 configs/archs/mbv2_cpu_wide_fixed_k5_e3.json
row fixed_k3_e3 configs/archs/mbv2_cpu_wide_fixed_k3_e3.json
row searched_s1 configs/archs/mbv2_cpu_wide_t7ms.json 1
row fixed_k3_e3_s1 configs/archs/mbv2_cpu_wide_fixed_k3_e3.json 1
