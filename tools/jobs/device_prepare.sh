#!/usr/bin/env bash
# Make the work tree ready for a piece of the campaign on a lent accelerator machine (tools/jobs/device_piece.sh,
# docs/model_card.md "A piece on a lent GPU"), and undo that afterwards:
#
#   STATE=/root/strkit-jobs/state tools/jobs/device_prepare.sh        # pack, wheels, slim the tree (prints MiB)
#   ... the device tool: run "LIMIT=565 TRAIN_EXTRA=train.channels_last=false bash tools/jobs/device_piece.sh",
#       carry [.devpack, .whl], timeout 600 ...
#   tools/jobs/device_prepare.sh --undo                                 # the index and excludes as they were
#
# The machine takes at most 64 MiB of the tree: the pack (46 MiB) and the wheels it lacks (12 MiB) fit only
# when the committed carry/ (about 65 MiB), strkit/assets and docs stay behind, so they are taken out of the
# index (git rm --cached) and excluded until --undo; nothing is deleted and nothing is committed.
set -euo pipefail
[ -f tools/train.py ] || { echo "device_prepare: run it from the repository root" >&2; exit 2; }
EXCLUDE=.git/info/exclude
SLIM="carry strkit/assets docs"
if [ "${1:-}" = "--undo" ]; then
  git reset -q -- $SLIM
  tmp=$(mktemp); grep -v -x -F -e "/carry/" -e "/strkit/assets/" -e "/docs/" "$EXCLUDE" > "$tmp" || true
  mv "$tmp" "$EXCLUDE"
  echo "device_prepare: index and $EXCLUDE restored"; git status --short | head -5
  exit 0
fi
STATE=${STATE:?set STATE to the campaign state folder (e.g. /root/strkit-jobs/state)}
mkdir -p "$(dirname "$EXCLUDE")"; touch "$EXCLUDE"
for line in /.whl/ /.devpack/; do grep -q -x -F "$line" "$EXCLUDE" || echo "$line" >> "$EXCLUDE"; done
python tools/jobs/device_pack.py "$STATE/runs/campaign_v2/train" .devpack
# the packages the machine's image lacks (its python is 3.12), as the device tool's README says
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl lmdb==3.0.0 rapidfuzz==3.14.6 albumentations==2.0.8 albucore==0.0.24 \
  pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 simsimd==6.5.16 \
  stringzilla==5.3.2
git rm -r -q --cached $SLIM
for line in /carry/ /strkit/assets/ /docs/; do grep -q -x -F "$line" "$EXCLUDE" || echo "$line" >> "$EXCLUDE"; done
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
extra=$(du -cb .devpack .whl | tail -1 | cut -f1)
echo "device_prepare: $(( (tree + extra) / 1048576 )) MiB travel (limit 64); undo with tools/jobs/device_prepare.sh --undo"
