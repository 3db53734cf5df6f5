#!/usr/bin/env bash
# One piece of the default-model-v2 campaign on a lent accelerator machine (docs/model_card.md, "A piece on a
# lent GPU"): a machine with a GPU and 16 cores, lent for minutes, that reaches nothing outside itself.
# Here, first: python tools/jobs/device_pack.py STATE/runs/campaign_v2/train .devpack (fonts, word list, real
# training splits, the run's last.pt) and the wheels it lacks in .whl/; then, on the machine, from the
# repository root (the device tool's `run`, carry [.devpack, .whl]):
#
#   OUT=... LIMIT=560 tools/jobs/device_piece.sh
#
# It installs the wheels, unpacks the pack, renders the campaign's three synthetic LMDBs from their seeds with
# every core (the same generator, seeds, word list and fonts; the fonts subset to the printable ASCII
# characters), resumes the run with `--resume` (data.workers set for the machine; the sampler and the
# augmentation do not depend on it), stops it with SIGTERM (the trainer saves the step it is at) so that the
# whole command ends within LIMIT seconds, and writes the run back under OUT as `tools/jobs/carry.py save`
# carries it, in a tar split into parts of 15 MiB (the device tool returns files of at most 16 MiB, 64 in all):
#
#   pkill -f "out_dir=$STATE/runs/campaign_v2/train"     # here: stop the local campaign first, then
#   python tools/jobs/device_pack.py --take-back FILES_AT $STATE/runs && STATE=$STATE tools/jobs/restart.sh
#
# QUICK=1: a rehearsal on this machine's CPU (200 words per LMDB, 40 seconds of training, no wheels).
set -uo pipefail
T0=$(date +%s)
LIMIT=${LIMIT:-560}
OUT=${OUT:?set OUT to the folder whose files come back}
PACK=${PACK:-.devpack}
STATE=${STATE:-/tmp/piece_state}
WORK=${WORK:-/tmp/piece_work}
QUICK=${QUICK:-0}
ARCH=configs/archs/mbv2_cpu_wide_t7ms.json
RUN=$STATE/runs/campaign_v2/train
elapsed() { echo $(( $(date +%s) - T0 )); }
say() { echo "== piece $(elapsed)s $*"; }
[ -f tools/train.py ] || { echo "device_piece: run it from the repository root" >&2; exit 2; }
[ -d "$PACK/carry" ] || { echo "device_piece: $PACK/carry missing; run tools/jobs/device_pack.py first" >&2; exit 2; }
mkdir -p "$OUT" "$WORK" "$STATE/runs"
exec > >(tee -a "$OUT/piece.log") 2>&1

if [ "$QUICK" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_piece: the wheels did not install" >&2; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
CORES=$(nproc)
say "machine: $CORES cores, $(python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

# 1. the pack: fonts, word list, real training splits (where configs/data/campaign.yaml looks: ../shared), state
tar xJf "$PACK/fonts.tar.xz" -C "$WORK"
mkdir -p ../shared/benchmarks || { echo "device_piece: cannot create ../shared/benchmarks" >&2; exit 3; }
for split in IIIT5K_train SVT_train IC15_train; do
  [ -f "../shared/benchmarks/$split/labels.tsv" ] || tar xJf "$PACK/real.tar.xz" -C ../shared/benchmarks "$split"
done
gunzip -c "$PACK/lexicon_en_100000.txt.gz" > "$WORK/lexicon.txt"
python3 tools/jobs/carry.py restore "$PACK/carry" "$STATE/runs" || exit 3
say "unpacked; the run resumes from step $(python3 -c "import torch; print(torch.load('$RUN/last.pt', map_location='cpu', weights_only=False)['step'])")"

# 2. the campaign's LMDBs (configs/data/campaign.yaml), all cores
count() { if [ "$QUICK" = 1 ]; then echo 200; else echo "$1"; fi; }
render() {  # preset count seed name
  [ -f "data_lmdb/$4/data.mdb" ] && return 0
  python3 tools/synth.py --preset "$1" --count "$(count "$2")" --workers "$CORES" --seed "$3" --out "data_lmdb/$4" \
    --fonts "$WORK/fonts" --no-system-fonts --lexicon "$WORK/lexicon.txt" --no-progress || exit 4
  say "rendered $4"
}
render clean 40000 7 synth_clean_40k
render mjsynth 119000 1 synth_mj_119k
render realistic 400000 3 synth_realistic_400k

# 3. train until LIMIT minus the time to pack (SIGTERM: the trainer saves last.pt at its step and exits 143)
budget=$(( LIMIT - $(elapsed) - 45 ))
[ "$QUICK" = 1 ] && budget=40
if [ "$budget" -gt 30 ]; then
  say "training for $budget s"
  workers=$(( CORES > 3 ? CORES - 2 : 1 ))
  timeout -s TERM -k 30 "$budget" python3 tools/train.py configs/train/default_v2.yaml model.backbone.arch="$ARCH" \
    train.out_dir="$RUN" data.workers="$workers" train.threads=2 ${TRAIN_EXTRA:-} --resume
  say "train exit $?"
else
  say "no time left to train ($budget s)"
fi

# 4. back: the run as carry.py carries it; snapshots in 16 bits when the whole would pass 56 MiB
rm -rf "$WORK/back"
python3 tools/jobs/carry.py save "$STATE/runs" "$WORK/back" >/dev/null || exit 5
size=$(du -sm "$WORK/back" | cut -f1)
if [ "$size" -gt 56 ]; then
  say "back: $size MiB, snapshots narrowed to 16 bits"
  python3 tools/jobs/device_pack.py --narrow-snapshots "$WORK/back" || exit 5
fi
tar cf - -C "$WORK/back" . | split -b 15M - "$OUT/piece.tar.part-"
grep -E "val_accuracy|images_per_s" "$RUN/metrics.csv" | tail -20
say "done: $(ls "$OUT" | tr '\n' ' ')"
