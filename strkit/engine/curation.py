"""Teacher-assisted data curation: filter illegible synthetic samples, audit real labels, pseudo-label crops.

All three read word crops with a :mod:`teacher <strkit.inference.teachers>` and compare its reading, folded
into a student charset (:class:`~strkit.inference.teachers.ClassMap`), with the labels under an evaluation
protocol (``36``: lowercase ``[0-9a-z]``; ``62``; ``94``):

- :func:`filter_lmdb` copies an LMDB, keeping the records the teacher reads as labelled (optionally also
  above a character-confidence floor). Images are copied byte for byte with their extra keys; the output
  is written through :class:`~strkit.data.lmdb.writer.LmdbWriter` (``.partial`` until complete) and resumable.
- :func:`audit_labels` lists the labels of a folder or LMDB that the teacher disagrees with, most confident
  disagreement first, for a person to review; nothing is relabelled.
- :func:`pseudo_label` reads a folder of unlabelled crops and writes ``labels.tsv`` with the readings the
  teacher is confident about (``kind: folder`` trains on it), plus every reading with its confidences.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rapidfuzz.distance import Levenshtein

from strkit.atomic import write_text_atomic
from strkit.charset import Charset, protocol_filter
from strkit.data.folder import read_gt_file, resolve_gt_file
from strkit.data.lmdb.format import decode_image
from strkit.data.lmdb.reader import LmdbDataset, lmdb_dir
from strkit.data.lmdb.writer import LmdbWriter
from strkit.inference.teachers import ClassMap, Teacher, TeacherOutput

#: Image suffixes :func:`pseudo_label` reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
#: Meta key of a filtered LMDB: source records consumed (committed with the records, for resume).
FILTER_POSITION_KEY = "curate-filter-position"
FILTER_REPORT_KEY = "curate-filter-report"

Progress = Callable[[int], None]


@dataclass
class Reading:
    """One crop as the teacher read it, folded into the student charset."""

    text: str
    min_conf: float
    mean_conf: float


def read_batch(teacher: Teacher, class_map: ClassMap, images: Sequence[np.ndarray]) -> list[Reading]:
    """Teacher readings of ``images``, folded (:meth:`ClassMap.fold_text`), with character confidences."""
    out: TeacherOutput = teacher.predict(images)
    readings = []
    for i, text in enumerate(out.texts):
        conf = out.char_confidences[i]
        readings.append(Reading(class_map.fold_text(text), out.min_confidence(i),
                                float(conf.mean()) if conf.size else 0.0))
    return readings


def agrees(reading: Reading, label: str, protocol: str) -> bool:
    """Whether the teacher's reading equals ``label`` under ``protocol``."""
    return protocol_filter(reading.text, protocol) == protocol_filter(label, protocol)


# ---------------------------------------------------------------------------------------------------
# Filtering an LMDB
# ---------------------------------------------------------------------------------------------------
@dataclass
class FilterReport:
    """What :func:`filter_lmdb` kept and dropped (counts over the source records it consumed)."""

    source: str
    teacher: str
    protocol: str
    min_confidence: float
    seen: int = 0
    kept: int = 0
    dropped_disagree: int = 0
    dropped_low_confidence: int = 0
    unreadable: int = 0

    @property
    def dropped(self) -> int:
        return self.seen - self.kept

    def summary(self) -> str:
        frac = self.dropped / max(self.seen, 1)
        return (f"{self.source}: kept {self.kept:,} of {self.seen:,} records, dropped {self.dropped:,} "
                f"({100 * frac:.1f} %: {self.dropped_disagree:,} read otherwise by {self.teacher}, "
                f"{self.dropped_low_confidence:,} below confidence {self.min_confidence}, "
                f"{self.unreadable:,} undecodable)")


#: Extra per-record keys copied with a record (``geom``: the synthetic generator's word geometry).
COPIED_EXTRA_KEYS = ("geom",)
Record = tuple[int, bytes | None, str, dict[str, bytes]]  # (position, image bytes, label, extra keys)


def _record_batches(ds: LmdbDataset, start: int, end: int, batch_size: int) -> Iterator[list[Record]]:
    """``(position, image bytes, label, extras)`` of the records at positions ``start .. end - 1``, batched."""
    for first in range(start, end, batch_size):
        yield [(i, ds.raw_image(i), ds.label(i),
                {k: v for k in COPIED_EXTRA_KEYS if (v := ds.get_extra(i, k)) is not None})
               for i in range(first, min(first + batch_size, end))]


def filter_lmdb(src: str | Path, dst: str | Path, teacher: Teacher, charset: Charset, protocol: str = "36",
                min_confidence: float = 0.0, batch_size: int = 64, overwrite: bool = False,
                resume: bool = False, limit: int = 0, progress: Progress | None = None) -> FilterReport:
    """Copy the records of LMDB ``src`` that ``teacher`` reads as labelled into a new LMDB ``dst``.

    Args:
        src: the LMDB to filter (e.g. a synthetic preset's output).
        dst: the filtered LMDB (written to ``dst.partial`` first).
        teacher: the reader that decides legibility.
        charset: the student charset the teacher's reading is folded into.
        protocol: the comparison protocol (``36``/``62``/``94``).
        min_confidence: also drop records whose weakest teacher character is below this.
        batch_size: crops per teacher call.
        overwrite, resume: as :class:`~strkit.data.lmdb.writer.LmdbWriter`.
        limit: consider only the first ``limit`` source records (0: all).
        progress: called with the number of records consumed after each batch.
    """
    src_path = lmdb_dir(src)
    class_map = ClassMap(teacher.classes, charset)
    report = FilterReport(str(src_path), teacher.name, str(protocol), float(min_confidence))
    writer = LmdbWriter(dst, overwrite=overwrite, resume=resume, tool="tools/curate.py filter")
    with writer:
        start = 0
        if resume and writer.get_meta(FILTER_REPORT_KEY):
            saved = json.loads(writer.get_meta(FILTER_REPORT_KEY) or b"{}")
            report = FilterReport(**{k: saved[k] for k in asdict(report)})
            start = int(writer.get_meta(FILTER_POSITION_KEY) or b"0")
        ds = LmdbDataset(src_path)
        end = min(len(ds), limit) if limit > 0 else len(ds)
        for batch in _record_batches(ds, start, end, batch_size):
            images = [decode_image(data, 3) if data else None for _, data, _, _ in batch]
            usable = [im for im in images if im is not None]
            readings = iter(read_batch(teacher, class_map, usable) if usable else [])
            for (index, data, label, extras), image in zip(batch, images, strict=True):
                keep = False
                if image is None:
                    report.unreadable += 1
                else:
                    reading = next(readings)
                    if not agrees(reading, label, protocol):
                        report.dropped_disagree += 1
                    elif reading.min_conf < min_confidence:
                        report.dropped_low_confidence += 1
                    else:
                        keep = True
                        report.kept += 1
                report.seen += 1
                # Staged before the record, so any commit holds both: a resume neither repeats nor loses one.
                writer.put_meta(FILTER_POSITION_KEY, str(index + 1).encode())
                writer.put_meta(FILTER_REPORT_KEY, json.dumps(asdict(report)).encode())
                if keep:
                    assert data is not None
                    writer.put(data, label, extras)
            if progress is not None:
                progress(len(batch))
        writer.put_meta(FILTER_REPORT_KEY, json.dumps(asdict(report)).encode())
    return report


# ---------------------------------------------------------------------------------------------------
# Auditing labels
# ---------------------------------------------------------------------------------------------------
@dataclass
class AuditRow:
    """A label the teacher disagrees with."""

    item: str
    label: str
    teacher: str
    min_conf: float
    mean_conf: float
    distance: int


@dataclass
class AuditReport:
    source: str
    teacher: str
    protocol: str
    seen: int = 0
    agree: int = 0
    unreadable: int = 0
    rows: list[AuditRow] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.source}: the teacher ({self.teacher}) agrees with {self.agree:,} of {self.seen:,} labels "
                f"({100 * self.agree / max(self.seen, 1):.1f} %, protocol {self.protocol}); "
                f"{len(self.rows):,} disagreements listed, {self.unreadable:,} undecodable images")


def labelled_items(source: str | Path) -> tuple[str, list[tuple[str, Callable[[], bytes | None], str]]]:
    """``(name, [(item name, bytes loader, label)])`` of a folder/gt file or an LMDB."""
    path = Path(source)
    if path.name == "data.mdb" or (path / "data.mdb").is_file():
        root = lmdb_dir(path)
        ds = LmdbDataset(root)
        return str(root), [(f"record {ds.record_index(i)}", (lambda i=i: ds.raw_image(i)), ds.label(i))
                           for i in range(len(ds))]
    gt = resolve_gt_file(path)

    def reader(p: Path) -> Callable[[], bytes | None]:
        return lambda: p.read_bytes() if p.is_file() else None

    base = gt.parent
    return str(gt), [(os.path.relpath(p, base), reader(p), label) for p, label in read_gt_file(gt)]


def audit_labels(source: str | Path, teacher: Teacher, charset: Charset, protocol: str = "36",
                 batch_size: int = 64, limit: int = 0, progress: Progress | None = None) -> AuditReport:
    """Labels of ``source`` (folder, gt file or LMDB) that ``teacher`` reads otherwise under ``protocol``.

    Rows are sorted by the teacher's weakest character confidence, highest first: a confident
    disagreement is the likeliest label error.
    """
    name, items = labelled_items(source)
    if limit > 0:
        items = items[:limit]
    class_map = ClassMap(teacher.classes, charset)
    report = AuditReport(name, teacher.name, str(protocol))
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        decoded = []
        for item, load, label in chunk:
            data = load()
            image = decode_image(data, 3) if data else None
            if image is None:
                report.unreadable += 1
            else:
                decoded.append((item, label, image))
        readings = read_batch(teacher, class_map, [d[2] for d in decoded]) if decoded else []
        for (item, label, _), reading in zip(decoded, readings, strict=True):
            report.seen += 1
            if agrees(reading, label, protocol):
                report.agree += 1
            else:
                a, b = protocol_filter(label, protocol), protocol_filter(reading.text, protocol)
                report.rows.append(AuditRow(item, label, reading.text, round(reading.min_conf, 4),
                                            round(reading.mean_conf, 4), Levenshtein.distance(a, b)))
        if progress is not None:
            progress(len(chunk))
    report.rows.sort(key=lambda r: -r.min_conf)
    return report


def write_audit_tsv(report: AuditReport, path: str | Path) -> Path:
    """The disagreements as a TSV (``item label teacher min_conf mean_conf distance``), atomically."""
    return _write_tsv(path, ["item", "label", "teacher", "min_conf", "mean_conf", "distance"],
                      [[r.item, r.label, r.teacher, r.min_conf, r.mean_conf, r.distance] for r in report.rows])


# ---------------------------------------------------------------------------------------------------
# Pseudo-labelling unlabelled crops
# ---------------------------------------------------------------------------------------------------
@dataclass
class PseudoReport:
    source: str
    teacher: str
    min_confidence: float
    seen: int = 0
    labelled: int = 0
    unreadable: int = 0
    empty: int = 0

    def summary(self) -> str:
        return (f"{self.source}: {self.labelled:,} of {self.seen:,} crops labelled by {self.teacher} at weakest-"
                f"character confidence >= {self.min_confidence} ({self.empty:,} read as empty, "
                f"{self.unreadable:,} undecodable)")


def find_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted."""
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def pseudo_label(folder: str | Path, out_dir: str | Path, teacher: Teacher, charset: Charset,
                 min_confidence: float = 0.9, batch_size: int = 64, overwrite: bool = False,
                 progress: Progress | None = None) -> PseudoReport:
    """Read every crop under ``folder`` and write ``out_dir/labels.tsv`` (confident readings, paths
    relative to ``out_dir``: train on it with ``{path: OUT_DIR, kind: folder}``) and
    ``out_dir/readings.tsv`` (every crop: path, reading, weakest and mean character confidence)."""
    out = Path(out_dir)
    labels_path = out / "labels.tsv"
    if labels_path.exists() and not overwrite:
        raise FileExistsError(f"{labels_path} exists; pass --overwrite to replace it, or choose another --out")
    images = find_images(folder)
    if not images:
        raise FileNotFoundError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    class_map = ClassMap(teacher.classes, charset)
    report = PseudoReport(str(folder), teacher.name, float(min_confidence))
    labels: list[list[object]] = []
    readings_rows: list[list[object]] = []
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        decoded = []
        for p in chunk:
            image = decode_image(p.read_bytes(), 3)
            if image is None:
                report.unreadable += 1
            else:
                decoded.append((p, image))
        readings = read_batch(teacher, class_map, [d[1] for d in decoded]) if decoded else []
        for (p, _), reading in zip(decoded, readings, strict=True):
            rel = Path(os.path.relpath(p.resolve(), out.resolve())).as_posix()
            report.seen += 1
            readings_rows.append([rel, reading.text, round(reading.min_conf, 4), round(reading.mean_conf, 4)])
            if not reading.text:
                report.empty += 1
            elif reading.min_conf >= min_confidence:
                labels.append([rel, reading.text])
                report.labelled += 1
        if progress is not None:
            progress(len(chunk))
    _write_tsv(out / "readings.tsv", ["path", "reading", "min_conf", "mean_conf"], readings_rows)
    _write_tsv(labels_path, None, labels)
    return report


def _tsv_field(value: object) -> str:
    """A TSV field: tabs and line breaks inside a value become spaces."""
    return " ".join(str(value).replace("\r", " ").replace("\n", " ").split("\t"))


def _write_tsv(path: str | Path, header: list[str] | None, rows: list[list[object]]) -> Path:
    """Write rows as TSV to ``path`` through a temporary file and a rename (never a half-written file)."""
    lines = ([header] if header else []) + rows
    return write_text_atomic(path, "".join("\t".join(_tsv_field(v) for v in row) + "\n" for row in lines))
