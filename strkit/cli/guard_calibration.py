"""Calibrate the benchmark guard's re-encoded-copy check (docs/benchmarks.md, "The benchmark guard").

For every test crop under ROOT it makes re-encoded copies (JPEG, resized) and reports the share the check
catches at ``LOOK_MIN``; for every crop of the training splits it reports the highest correlation with a
test crop of the same label (the false-positive side: it must stay below ``LOOK_MIN``).

    python tools/guard_calibration.py ../shared/benchmarks    (strkit.cli.guard_calibration)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from strkit.data import fingerprints as fp
from strkit.data.folder import LABELS_FILE, read_gt_file

COPIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "JPEG quality 90, same size": lambda g: cv2.imencode(".jpg", g, [cv2.IMWRITE_JPEG_QUALITY, 90])[1],
    "JPEG quality 50": lambda g: cv2.imencode(".jpg", g, [cv2.IMWRITE_JPEG_QUALITY, 50])[1],
    "resized to 100x32 (cubic), PNG": lambda g: cv2.imencode(
        ".png", cv2.resize(g, (100, 32), interpolation=cv2.INTER_CUBIC))[1],
    "upscaled 2x (cubic), JPEG quality 75": lambda g: cv2.imencode(
        ".jpg", cv2.resize(g, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 75])[1],
    "halved (area), PNG": lambda g: cv2.imencode(
        ".png", cv2.resize(g, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))[1],
}
TRAIN_SPLITS = ("IIIT5K_train", "SVT_train", "IC15_train")


def _score(prints: fp.BenchmarkFingerprints, data: bytes, label: str) -> float:
    """The highest correlation of this record with a same-label test crop (-1 when none)."""
    look = prints.closest_look(data, label)
    return -1.0 if look is None else look[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="benchmark root (../shared/benchmarks)")
    args = p.parse_args(argv)
    prints = fp.benchmark_fingerprints(args.root)
    if prints is None:
        print(f"guard_calibration: no benchmark test set under {args.root}; give the benchmark root",
              file=sys.stderr)
        return 2
    caught = {name: [] for name in COPIES}
    for name in ("IIIT5K_3000", "SVT_647", "IC13_1095", "IC15_2077"):
        gt = args.root / name / LABELS_FILE
        if not gt.is_file():
            continue
        for image, label in read_gt_file(gt):
            grey = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
            if grey is None or not fp.label_key(label):
                continue
            for copy, make in COPIES.items():
                caught[copy].append(_score(prints, make(grey).tobytes(), label) >= fp.LOOK_MIN)
    print(f"| copy made by | caught at >= {fp.LOOK_MIN} |\n|---|---|")
    for copy, hits in caught.items():
        print(f"| {copy} | {100 * np.mean(hits):.1f} % of {len(hits)} |")
    print("\n| training split | same-label crops | highest correlation | > 0.95 | flagged |\n|---|---|---|---|---|")
    for split in TRAIN_SPLITS:
        gt = args.root / split / LABELS_FILE
        if not gt.is_file():
            continue
        scores = np.array([s for data, label in fp.folder_records(gt)
                           if (s := _score(prints, data, label)) > -1.0])
        print(f"| {split} | {len(scores)} | {scores.max():.3f} | {(scores > 0.95).sum()} | "
              f"{(scores >= fp.LOOK_MIN).sum()} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
