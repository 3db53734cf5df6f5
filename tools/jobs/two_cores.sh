#!/usr/bin/env bash
# Two cores for one run (docs/benchmarks.md, "Faster steps"): the same training run as
#   1 process x 2 threads, 2 DDP processes x 1 thread (gloo; 16 images per rank = the same 32 per step),
#   and 1 process x 1 thread (pinned to core 0) for reference,
# each for STEPS steps of CONFIG (default configs/train/default_model.yaml: its clean-word phase), then the
# images/s the trainer logged. Nothing else may run on the machine meanwhile (stop other jobs first).
#
#   STEPS=240 OUT=/tmp/two_cores tools/jobs/two_cores.sh      # needs data_lmdb/synth_clean_40k (see the config)
#   CONFIG=configs/train/crnn_real.yaml EXTRA="train.max_minutes=0" OUT=/tmp/two_cores_crnn tools/jobs/two_cores.sh
set -u
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-240}; OUT=${OUT:-/tmp/two_cores}; CONFIG=${CONFIG:-configs/train/default_model.yaml}
export PYTHONPATH=$PWD MKL_NUM_THREADS=1
COMMON="$CONFIG ${EXTRA:-} train.steps=$STEPS train.val_every=100000 train.save_every=100000
  train.log_every=40 train.progress=false train.tensorboard=false data.workers=1"
mkdir -p "$OUT"
OMP_NUM_THREADS=2 python tools/train.py $COMMON train.threads=2 train.out_dir="$OUT/p1t2" --overwrite > "$OUT/p1t2.log" 2>&1
OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node 2 tools/train.py $COMMON train.threads=1 \
  train.batch_size=16 train.out_dir="$OUT/p2t1" --overwrite > "$OUT/p2t1.log" 2>&1
OMP_NUM_THREADS=1 taskset -c 0 python tools/train.py $COMMON train.threads=1 train.out_dir="$OUT/p1t1" --overwrite \
  > "$OUT/p1t1.log" 2>&1
for r in p1t2 p2t1 p1t1; do
  echo "$r images/s by logged step: $(grep images_per_s "$OUT/$r/metrics.csv" | cut -d, -f1,3 | tr '\n' ' ')"
done
