#!/usr/bin/env bash
# Default model v2, the last step (docs/model_card.md, the default-model issue's items 4 and its evidence):
# bundle the campaign's model as `default`, keep the current model as `fast` with half-precision .pt weights
# (so that the two fit the 30 MB the package allows), and measure everything the model card reports.
# Run it from the repository root (it writes strkit/assets) once the campaign has finished:
#
#   STATE=/root/strkit-jobs/state tools/jobs/bundle_v2.sh
#
# Environment:
#   CKPT    the checkpoint to bundle (default $STATE/runs/campaign_v2/train/best.pt: the weight average with the
#           best held-out validation accuracy; the campaign must have finished unless CKPT is given)
#   OUT     exports, reports and measurements (default $STATE/runs/campaign_v2/bundle)
#   ASSETS  where the bundle goes (default strkit/assets; a scratch folder for a dry run)
#   QUICK=1 a dry run of every step on the first 200 crops of each set (the figures mean nothing)
# Every step writes OUT/<step>.done and is skipped when rerun, so an interrupted run continues.
set -euo pipefail
STATE=${STATE:?set STATE to the campaign state folder (e.g. /root/strkit-jobs/state)}
CKPT_GIVEN=${CKPT:+1}
CKPT=${CKPT:-$STATE/runs/campaign_v2/train/best.pt}
OUT=${OUT:-$STATE/runs/campaign_v2/bundle}
ASSETS=${ASSETS:-strkit/assets}
SETS="IIIT5K_3000 SVT_647 IC13_857 IC13_1015 IC15_2077"
PEER_SETS="IIIT5K_3000 SVT_647 IC13_1015 IC15_2077"   # the four the peers' figures (total 84.3 / 90.5) cover
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[ -f tools/export.py ] || { echo "bundle_v2: run it from the repository root" >&2; exit 2; }
[ -f "$CKPT" ] || { echo "bundle_v2: checkpoint $CKPT not found; set CKPT or finish the campaign first" >&2; exit 2; }
if [ -z "$CKPT_GIVEN" ] && [ ! -f "$STATE/runs/campaign_v2/train.done" ]; then
  echo "bundle_v2: the campaign has not finished ($STATE/runs/campaign_v2/train.done missing); continue it with" \
       "tools/jobs/campaign_v2.sh, or name a checkpoint with CKPT=" >&2
  exit 2
fi
[ -f "$ASSETS/fast.pt" ] || [ -f "$OUT/fast.done" ] || cp strkit/assets/fast.* "$ASSETS/" 2>/dev/null || true
[ -f "$ASSETS/fast.pt" ] || { echo "bundle_v2: $ASSETS/fast.pt not found (the model that stays 'fast')" >&2; exit 2; }
mkdir -p "$OUT"
count=(--count 0); acc_count=(); [ "${QUICK:-0}" = 1 ] && count=(--count 200) && acc_count=(--accuracy-count 200)
done_() { [ -f "$OUT/$1.done" ]; }
mark() { touch "$OUT/$1.done"; }
step() { echo "== bundle_v2 $(date -u +%H:%M:%S) $*"; }

# 1. fast: the current bundled model's weights, re-exported, with an fp16 .pt (reads within 0.15 point of the
#    fp32 .pt, model card); its int8 file is kept only if it still stays within 0.5 point on every whole set.
#    Once bundled so (its .pt then holds fp16 weights), the files are kept as they are: exporting again from
#    the fp16 weights would change the ONNX file that `fast` users read with.
fast_bundled() { python -c "import sys; from strkit.checkpoint import load_checkpoint; from strkit.models.zoo import bundle_info
sys.exit(0 if bundle_info(load_checkpoint(sys.argv[1])).get('weights') == 'fp16' else 1)" "$ASSETS/fast.pt"; }
if ! done_ fast && fast_bundled; then
  step "fast: already bundled with fp16 weights; its files are kept"
  rm -rf "$OUT/bundle_fast" && mkdir -p "$OUT/bundle_fast" && cp "$ASSETS"/fast.* "$OUT/bundle_fast/"
  mark fast
fi
if ! done_ fast; then
  step "fast: export + fp16 bundle"
  rm -rf "$OUT/bundle_fast"
  python tools/export.py "$ASSETS/fast.pt" --out "$OUT/export_fast" --int8 --accuracy $SETS "${acc_count[@]}" \
    --protocol 36 --parity-count 200 --bundle "$OUT/bundle_fast" --bundle-name fast --bundle-weights fp16
  mark fast
fi
# 2. default: the campaign's model; int8 is judged under the 94-character protocol it is trained for.
if ! done_ default; then
  step "default: export + fp16 bundle of $CKPT"
  rm -rf "$OUT/bundle_default"
  python tools/export.py "$CKPT" --out "$OUT/export_default" --int8 --accuracy $SETS "${acc_count[@]}" \
    --protocol 94 --parity-count 200 --bundle "$OUT/bundle_default" --bundle-weights fp16
  mark default
fi
# 3. the bundle: both models, at most 30 MB (tests/test_zoo.py holds it there), then into ASSETS.
if ! done_ assets; then
  total=$(cat "$OUT"/bundle_fast/* "$OUT"/bundle_default/* | wc -c)
  step "bundle: $total bytes"
  [ "$total" -le 30000000 ] || { echo "bundle_v2: the bundle is $total bytes, over 30 MB" >&2; exit 1; }
  rm -f "$ASSETS"/default.* "$ASSETS"/fast.*
  cp "$OUT"/bundle_fast/* "$OUT"/bundle_default/* "$ASSETS/"
  ls -l "$ASSETS" | tee "$OUT/assets.txt"
  mark assets
fi
# 4. the model card's table: word accuracy and 1-NED under the 36, 62 and 94 protocols, one reading each.
if ! done_ eval; then
  step "eval: $SETS, protocols 36 62 94"
  python tools/eval.py "$ASSETS/default.pt" --benchmarks $SETS --protocol 36 62 94 --threads 1 --no-speed \
    --no-progress --out "$OUT/eval_default"
  mark eval
fi
# 5. speed of the bundled files: ms/image at batch 1 (median) and images/s at batch 64, ORT and PyTorch.
if ! done_ speed; then
  step "speed: batch 1 and batch 64, one thread"
  python tools/bench.py infer --models "$ASSETS/default.pt" "$ASSETS/default.onnx" \
    $(ls "$ASSETS"/default.int8.onnx 2>/dev/null) --backend torch onnxruntime --precision fp32 \
    --channels-last on --threads 1 --repeats 300 --batch-repeats 10 --img-w 128 --max-busy 2 --json "$OUT/speed.json"
  mark speed
fi
# 6. side by side in one run, one thread, end to end, on every crop of the peers' four sets.
if [ "$ASSETS" = strkit/assets ]; then readers=(default fast rapidocr); else
  readers=("$ASSETS/default.onnx" "$ASSETS/fast.onnx" rapidocr); fi
for b in $PEER_SETS; do
  if ! done_ "compare_$b"; then
    step "compare on $b: ${readers[*]}"
    python tools/bench.py compare --readers "${readers[@]}" --benchmark "$b" "${count[@]}" --threads 1 --json "$OUT/compare_$b.json"
    mark "compare_$b"
  fi
done
# 7. the learning curve: held-out validation and the benchmarks at every snapshot, against CPU-hours.
if ! done_ curve && [ "${QUICK:-0}" != 1 ]; then
  step "learning curve"
  python tools/plot_curve.py "$STATE/runs/campaign_v2/train" --benchmarks $PEER_SETS --threads 1 \
    --out docs/default_v2_curve.png --reference "PP-OCRv4 total=84.3" "first default model (fast) total=68.9" \
    --title "default model v2 campaign (94_full; benchmarks: 36 protocol)"
  mark curve
fi
step "done: $OUT (export reports, eval_default/, speed.json, compare_*.json); now the model card and README"
