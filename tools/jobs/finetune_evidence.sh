#!/usr/bin/env bash
# Fine-tuning evidence (docs/benchmarks.md, "Fine-tuning the bundled model"): fine-tune the bundled model on
# IC15's training split for 15 one-core minutes with and without replay (IC15_2077 before/after, forgetting on
# IIIT5K_3000 / SVT_647 / IC13_1015); the same for a base model that never saw IC15_train (the bundled one was
# trained on it, so it has nothing new to adapt to); and teach the bundled model two new characters (EUR and
# GBP signs) from rendered words. Resumable; rerun to continue. NOIC15_STEPS (default 12000) sets the base's
# training steps (a few for a smoke test).
#
#   STATE=/root/strkit-jobs/state CORE=0 nohup tools/jobs/finetune_evidence.sh > finetune.log 2>&1 &
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
STATE=${STATE:?set STATE to a folder outside the work tree}
CORE=${CORE:-0}
cd "$REPO"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH="$REPO"
R=$STATE/ft
mkdir -p "$R"
SETS="IIIT5K_3000 SVT_647 IC13_1015 IC15_2077"
ev() {  # checkpoint-or-name out
  [ -f "$2/results.csv" ] || taskset -c "$CORE" python tools/eval.py "$1" --benchmarks $SETS --threads 1 --no-speed \
    --no-progress --out "$2"
}
ft() {  # name overrides...
  name=$1; shift
  if [ ! -f "$R/$name.done" ]; then
    r=; [ -f "$R/$name/last.pt" ] && r=--resume
    /usr/bin/time -f "$name wall %e s, peak RSS %M KB" taskset -c "$CORE" python tools/train.py finetune \
      train.out_dir="$R/$name" "$@" $r && touch "$R/$name.done"
  fi
  ev "$R/$name/best.pt" "$R/$name/eval"
}
ev default "$R/default_eval"
IC15="data.train=[{path: ../shared/benchmarks/IC15_train, kind: folder, name: IC15_train}]"
ft ic15_replay "$IC15"
ft ic15_noreplay "$IC15" data.replay.ratio=0
# a base without IC15_train (the default model's architecture and curriculum, IC15_train neither trained on nor
# held out), then the same two fine-tunings of it
BASE=$R/base_noic15
if [ ! -f "$BASE.done" ]; then
  r=; [ -f "$BASE/last.pt" ] && r=--resume
  /usr/bin/time -f "base_noic15 wall %e s, peak RSS %M KB" taskset -c "$CORE" python tools/train.py \
    configs/train/default_model.yaml "data.train.4.ratio_schedule=[[1200, 0.0]]" data.train.4.val_fraction=0 \
    train.steps="${NOIC15_STEPS:-12000}" train.val_every=500 train.progress=false train.out_dir="$BASE" $r \
    && touch "$BASE.done"
fi
ev "$BASE/best.pt" "$BASE/eval"
ft noic15_ic15_replay "$IC15" train.init_from="$BASE/best.pt"
ft noic15_ic15_noreplay "$IC15" train.init_from="$BASE/best.pt" data.replay.ratio=0
# new characters: 0-9 a-z plus EUR and GBP; 20k rendered training words (half with one of them), a test set of
# 1,000 rendered words that all hold one (another seed)
CS=$R/charset_36_eur_gbp.txt
python - "$CS" <<'PY'
import sys
chars = list("0123456789abcdefghijklmnopqrstuvwxyz") + ["\u20ac", "\u00a3"]
open(sys.argv[1], "w", encoding="utf-8").write("\n".join(chars) + "\n")
PY
[ -f "$R/euro_train/data.mdb" ] || taskset -c "$CORE" python tools/synth.py --preset mjsynth --charset "$CS" \
  --focus-chars "€£" --focus-p 0.5 --count 20000 --workers 1 --seed 3 --out "$R/euro_train" --no-progress --overwrite
[ -f "$R/euro_test/data.mdb" ] || taskset -c "$CORE" python tools/synth.py --preset mjsynth --charset "$CS" \
  --focus-chars "€£" --focus-p 1.0 --count 1000 --workers 1 --seed 99 --out "$R/euro_test" --no-progress --overwrite
ft euro "data.train=[{path: $R/euro_train, kind: lmdb, name: euro}]" model.charset="$CS"
[ -f "$R/euro_test.md" ] || taskset -c "$CORE" python - "$R" <<'PY' > "$R/euro_test.md"
import sys
from strkit.api import Recognizer
from strkit.data.lmdb.reader import LmdbDataset
from strkit.charset import Charset
R = sys.argv[1]
cs = Charset.from_spec(f"{R}/charset_36_eur_gbp.txt")
ds = LmdbDataset(f"{R}/euro_test")
images = [ds[i][0] for i in range(len(ds))]
labels = [cs.normalize(ds.label(i))[0] for i in range(len(ds))]
print("| model | words | word accuracy | words whose EUR/GBP sign is read |")
print("|---|---:|---:|---:|")
for name, rec in (("default (36 classes)", Recognizer.from_pretrained("default", backend="torch", threads=1)),
                  ("fine-tuned to 0-9a-z + EUR GBP", Recognizer.from_checkpoint(f"{R}/euro/best.pt", backend="torch",
                                                                               threads=1))):
    texts = [r.text for r in rec.recognize(images, batch_size=64)]
    right = sum(t == lab for t, lab in zip(texts, labels))
    sign = sum(any(c in t for c in "\u20ac\u00a3") and [c for c in t if c in "\u20ac\u00a3"] ==
               [c for c in lab if c in "\u20ac\u00a3"] for t, lab in zip(texts, labels))
    print(f"| {name} | {len(labels)} | {100 * right / len(labels):.1f} | {100 * sign / len(labels):.1f} |")
PY
ev "$R/euro/best.pt" "$R/euro/eval"
