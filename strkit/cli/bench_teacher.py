"""``tools/bench.py teacher``: what a distillation teacher costs: crops/s of the teacher, crops/s of the
teacher cache (write and read) and the cache's size per 100k views."""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from strkit.charset import Charset, protocol_filter
from strkit.cli.bench import BENCH_COMMANDS, report
from strkit.cli.common import positive_int


@dataclass
class TeacherCost:
    """One measurement of :class:`TeacherBench`."""

    teacher: str
    crops: int
    teacher_crops_per_s: float
    cache_write_per_s: float
    cache_read_per_s: float
    bytes_per_view: float
    accuracy: float  # reading (folded into the student charset) == label under protocol 36, in %

    @property
    def mb_per_100k(self) -> float:
        return self.bytes_per_view * 100_000 / 2**20

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mb_per_100k_views": self.mb_per_100k}


def _crops(source: str, count: int) -> tuple[list[Any], list[str]]:
    """The first ``count`` crops (RGB uint8) of a folder dataset or an LMDB, and their labels."""
    from strkit.data.lmdb.format import decode_image
    from strkit.engine.curation import labelled_items

    _, items = labelled_items(source)
    images, labels = [], []
    for _, load, label in items:
        data = load()
        image = decode_image(data, 3) if data else None
        if image is not None:
            images.append(image)
            labels.append(label)
        if len(images) >= count:
            break
    if not images:
        raise ValueError(f"{source}: no readable crop")
    return images, labels


@BENCH_COMMANDS.register("teacher")
class TeacherBench:
    """Distillation teacher: its crops/s, the teacher cache's write/read crops/s and MB per 100k views."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--teacher", default="rapidocr", help="rapidocr (default) or strkit")
        parser.add_argument("--teacher-model", default=None,
                            help="rapidocr: recogniser file in rapidocr/models; strkit: a .pt or .onnx (required)")
        parser.add_argument("--source", default="../shared/benchmarks/IIIT5K_train",
                            help="folder dataset, gt file or LMDB whose crops are read (default: IIIT5K_train); a "
                                 "benchmark test set only to report the teacher's accuracy")
        parser.add_argument("--count", type=positive_int, default=256, help="crops to read (default 256)")
        parser.add_argument("--threads", type=positive_int, default=1, help="teacher threads (default 1)")
        parser.add_argument("--batch-size", type=positive_int, default=32, help="crops per teacher call (default 32)")
        parser.add_argument("--charset", default="36_lowercase",
                            help="student charset the outputs are folded into (default 36_lowercase)")
        parser.add_argument("--json", default=None, help="also write the results to this JSON file")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from strkit.data.teacher_cache import TeacherCache, TeacherTarget, image_key
        from strkit.inference.teachers import ClassMap, build_teacher

        if args.teacher == "strkit" and not args.teacher_model:
            raise ValueError("--teacher strkit needs --teacher-model PATH")
        teacher = build_teacher(args.teacher, args.teacher_model, threads=args.threads, batch_size=args.batch_size)
        images, labels = _crops(args.source, args.count)
        teacher.predict(images[: min(4, len(images))])  # warm-up (session start, first allocations)
        t0 = time.perf_counter()
        out = teacher.predict(images)
        t_teacher = time.perf_counter() - t0
        class_map = ClassMap(teacher.classes, Charset.from_spec(args.charset))
        entries = [(image_key(im), TeacherTarget(class_map.fold_text(out.texts[i]), out.min_confidence(i),
                                                 class_map.fold_probs(out.probs[i]).numpy()))
                   for i, im in enumerate(images)]
        with tempfile.TemporaryDirectory() as tmp:
            cache = TeacherCache(Path(tmp) / "cache", teacher.name, class_map.charset.chars)
            t0 = time.perf_counter()
            for start in range(0, len(entries), args.batch_size):
                cache.put_many(entries[start:start + args.batch_size])
            t_write = time.perf_counter() - t0
            t0 = time.perf_counter()
            for im in images:
                cache.get(image_key(im))
            t_read = time.perf_counter() - t0
            size = sum(len(t.encode()) + len(k) for k, t in entries) / len(entries)
            cache.close()
        n = len(images)
        right = sum(protocol_filter(target.text) == protocol_filter(label)
                    for (_, target), label in zip(entries, labels, strict=True))
        r = TeacherCost(teacher.name, n, n / t_teacher, n / t_write, n / t_read, size, 100.0 * right / n)
        table = ("| teacher | crops | accuracy (36) | teacher crops/s | cache write crops/s | cache read crops/s "
                 "(hash + get) | MB per 100k views |\n|---|---:|---:|---:|---:|---:|---:|\n"
                 f"| {r.teacher} | {r.crops} | {r.accuracy:.1f} | {r.teacher_crops_per_s:.1f} | "
                 f"{r.cache_write_per_s:,.0f} | {r.cache_read_per_s:,.0f} | {r.mb_per_100k:.0f} |")
        return report(args, "teacher", table, [r])
