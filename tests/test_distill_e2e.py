"""End-to-end distillation: a few training steps with the bundled model as teacher, cache reuse, resume."""

from __future__ import annotations

import csv
import importlib.util
import os
from importlib import resources
from pathlib import Path

import pytest
from test_train_e2e import small_model_config, tiny_overrides

from strkit.config import ConfigError, load_config
from strkit.data.teacher_cache import TeacherCache, image_key
from strkit.engine import distill
from strkit.engine.distill import source_stamp

pytestmark = pytest.mark.slow
TEACHER = Path(str(resources.files("strkit") / "assets")) / "default.pt"


def _distill(cache: Path, *extra: str) -> list[str]:
    return ["distill.teacher=strkit", f"distill.teacher_model={TEACHER}", f"distill.cache={cache}",
            "distill.bag_weight=1.0", "distill.sequence_weight=0.5", "distill.min_confidence=0.5", *extra]


def _metric(out: Path, key: str) -> list[float]:
    with (out / "metrics.csv").open() as fh:
        return [float(r["value"]) for r in csv.DictReader(fh) if r["key"] == key]


def test_distilled_training_fills_the_cache_once_and_logs_its_losses(word_folder, tmp_path, monkeypatch):
    from strkit.engine.trainer import Trainer

    cache = tmp_path / "cache"
    out = tmp_path / "run"
    cfg = load_config(small_model_config(), tiny_overrides(word_folder, out, steps=6) + _distill(cache))
    trainer = Trainer(cfg)
    trainer.fit()
    assert trainer.distiller.stats["read"] == trainer.distiller.stats["crops"] == 72  # 96 words, 25 % held out
    reader = TeacherCache(cache, trainer.distiller.teacher_name, trainer.model.charset.chars, readonly=True)
    assert len(reader) == 72
    from conftest import WORDS

    from strkit.data.folder import FolderDataset

    ds = FolderDataset(word_folder, channels=1)
    readings = [reader.get(image_key(ds[i][0])) for i in range(len(ds))]
    hits = [(r.text, ds[i][1]) for i, r in enumerate(readings) if r is not None]
    # the 72 training crops (a held-out crop with the pixels of a training one shares its entry)
    assert len(hits) >= 72 and sum(t == w for t, w in hits) >= 60  # the teacher reads these words
    assert set(w for _, w in hits) <= set(WORDS)
    bag, fraction = _metric(out, "distill_bag"), _metric(out, "distill_fraction")
    assert bag and all(b >= 0 for b in bag) and fraction == [1.0, 1.0]
    assert _metric(out, "distill_sequence")

    # the source is recorded as complete: a later run neither reads nor even hashes its crops
    stamp = source_stamp(word_folder, 72)
    assert reader.source_complete(stamp)
    reader.close()

    def no_hashing(*args, **kwargs):
        raise AssertionError("a completely cached source was hashed again")

    monkeypatch.setattr(distill, "image_key", no_hashing)
    # a loader worker forked after the cache was opened in this process reads it too
    again = Trainer(load_config(small_model_config(), tiny_overrides(word_folder, tmp_path / "run2", steps=3)
                                + _distill(cache) + ["data.workers=1"]))
    again.fit()
    assert again.distiller.stats["read"] == 0 and again.distiller.stats["crops"] == 72  # cached: not read again
    labels = word_folder / "labels.tsv"
    st = labels.stat()
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rewritten source is hashed again
    try:
        assert source_stamp(word_folder, 72) != stamp
    finally:
        os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_distill_config_errors(word_folder, tmp_path):
    from strkit.engine.trainer import Trainer

    base = tiny_overrides(word_folder, tmp_path / "r", steps=2)
    with pytest.raises(ConfigError, match="every distill"):
        Trainer(load_config(small_model_config(), base + ["distill.teacher=strkit"]))
    with pytest.raises(ConfigError, match="not a training source"):
        Trainer(load_config(small_model_config(), base + _distill(tmp_path / "c", "distill.sources=[nope]"))).fit()


@pytest.mark.skipif(importlib.util.find_spec("rapidocr") is None, reason="optional extra 'teacher' not installed")
def test_rapidocr_teacher_distils_two_steps(word_folder, tmp_path):
    from strkit.engine.trainer import Trainer

    cfg = load_config(small_model_config(), tiny_overrides(word_folder, tmp_path / "run", steps=2) + [
        "distill.teacher=rapidocr", f"distill.cache={tmp_path / 'cache'}", "distill.bag_weight=1.0"])
    trainer = Trainer(cfg)
    trainer.fit()
    assert trainer.distiller.stats["read"] == 72 and _metric(tmp_path / "run", "distill_bag")
