"""Word geometry from the synthetic generator to the ScRN rectifier's auxiliary loss, end to end: the
``geom`` LMDB key, its transformation by resize / padding / augmentation into the model input frame,
3-tuple batches only when geometry is on, the trainer's geometry term, and the configuration errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from strkit.charset import Charset, LabelFilter
from strkit.config import ConfigError, ModelConfig, SourceConfig, load_config
from strkit.data.augment import AlbumentationsPipeline, import_albumentations, keypoints_exact
from strkit.data.lmdb.format import GEOMETRY_KEY, CorruptRecordError, LmdbError, decode_geometry
from strkit.data.lmdb.reader import LmdbDataset
from strkit.data.lmdb.writer import LmdbWriter
from strkit.data.sources import build_source
from strkit.data.synth.config import load_synth_config
from strkit.data.synth.generate import GEOMETRY_KEY as SYNTH_GEOMETRY_KEY
from strkit.data.synth.generate import generate_lmdb
from strkit.data.synth.renderer import Renderer
from strkit.data.transforms import ImageTransform, TransformedDataset, collate
from strkit.engine.distributed import DistInfo
from strkit.engine.run_data import build_run_data
from strkit.models.recognizer import GEOMETRY_TARGETS, build_model
from strkit.models.rectifiers.scrn import geometry_targets_from_json

REPO = Path(__file__).resolve().parents[1]
A = import_albumentations()

# A box record in a 200×64 source image: the word fills x 40..160, y 12..52 (continuous pixel coordinates).
BOX = {"top": [[40.0, 12.0], [100.0, 12.0], [160.0, 12.0]],
       "bottom": [[40.0, 52.0], [100.0, 52.0], [160.0, 52.0]], "width": 200, "height": 64}


def box_image(record: dict, h: int = 64, w: int = 200) -> np.ndarray:
    """Black ``h×w`` gray image with the record's box (its first and last points) filled white."""
    img = np.zeros((h, w), np.uint8)
    (x0, y0), (x1, y1) = record["top"][0], record["bottom"][-1]
    img[int(y0):int(y1), int(x0):int(x1)] = 255
    return img


def white_extent(img: np.ndarray) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)`` of the white region, in continuous pixel coordinates (sub-pixel: the
    fraction of white in the border rows/columns counts)."""
    a = img[..., 0].astype(np.float64) / 255.0 if img.ndim == 3 else img.astype(np.float64) / 255.0
    cols, rows = a.max(axis=0), a.max(axis=1)
    xs, ys = np.flatnonzero(cols > 0.5), np.flatnonzero(rows > 0.5)
    return float(xs[0]), float(xs[-1] + 1), float(ys[0]), float(ys[-1] + 1)


def test_decode_geometry_checks_the_record():
    g = decode_geometry(json.dumps(BOX).encode())
    assert g is not None and g["top"].shape == (3, 2) and g["width"] == 200.0 and g["height"] == 64.0
    np.testing.assert_array_equal(g["bottom"][0], [40.0, 52.0])
    for bad in (b"not json", b"{}", json.dumps({**BOX, "top": [[1, 2]]}).encode(),
                json.dumps({**BOX, "bottom": BOX["bottom"][:2]}).encode(),
                json.dumps({**BOX, "width": 0}).encode(), json.dumps({**BOX, "top": [[1, 2, 3]] * 3}).encode()):
        assert decode_geometry(bad) is None, bad


# ---------------------------------------------------------------------------------------------------
# LMDB
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 24-sample synthetic LMDB written with geometry, and a 6-sample one without."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("geom_synth")
    mp.setenv("STRKIT_CACHE_DIR", str(root / "cache"))
    lex = root / "words.txt"
    lex.write_text("\n".join(["north", "south", "main", "avenue", "bakery", "closed", "hello", "stop"]))
    renderer = Renderer(load_synth_config("mjsynth", {"fonts.system": False, "fonts.dirs": ["@matplotlib"],
                                                      "text.lexicon": str(lex)}))
    geo = generate_lmdb(renderer, root / "geo", 24, seed=3, geometry=True, progress=False).path
    plain = generate_lmdb(renderer, root / "plain", 6, seed=4, geometry=False, progress=False).path
    mp.undo()
    return {"geo": Path(geo), "plain": Path(plain)}


def test_geometry_key_is_read_from_the_lmdb(synth_dirs):
    assert GEOMETRY_KEY == SYNTH_GEOMETRY_KEY
    ds = LmdbDataset(synth_dirs["geo"], channels=1, geometry=True)
    assert len(ds) == 24
    for i in (0, 5, 23):
        img, label, geom = ds[i]
        raw = json.loads(ds.get_extra(i, GEOMETRY_KEY))
        np.testing.assert_array_equal(geom["top"], raw["top"])
        np.testing.assert_array_equal(geom["bottom"], raw["bottom"])
        assert (geom["width"], geom["height"]) == (img.shape[1], img.shape[0]) and label
    assert len(LmdbDataset(synth_dirs["geo"], channels=1)[0]) == 2  # unchanged without geometry


def test_lmdb_without_geometry_fails_at_once(synth_dirs):
    with pytest.raises(LmdbError, match=r"no 'geom-%09d' records.*tools/synth.py --geometry"):
        LmdbDataset(synth_dirs["plain"], geometry=True)
    src = SourceConfig(path=str(synth_dirs["plain"]), kind="lmdb", geometry=True)
    with pytest.raises(LmdbError, match="regenerate this LMDB with tools/synth.py --geometry"):
        build_source(src, None, 1, None, geometry=True)
    assert len(build_source(src, None, 1, None)[0]) == 2  # the flag is only read when the run uses geometry


def test_a_malformed_geometry_record_is_skipped_or_raises(tmp_path):
    png = cv2.imencode(".png", box_image(BOX))[1].tobytes()
    with LmdbWriter(tmp_path / "db") as w:
        w.put(png, "good", {GEOMETRY_KEY: json.dumps(BOX).encode()})
        w.put(png, "bad", {GEOMETRY_KEY: b"{\"top\": 3}"})
    ds = LmdbDataset(tmp_path / "db", channels=1, geometry=True)
    assert ds[1][1] == "good" and ds.num_corrupt == 1  # record 2 is skipped: the next valid one comes back
    with pytest.raises(CorruptRecordError, match="not valid geometry JSON"):
        LmdbDataset(tmp_path / "db", channels=1, geometry=True, strict=True)[1]


# ---------------------------------------------------------------------------------------------------
# Transform: resize, padding and augmentation move the geometry into the model input frame
# ---------------------------------------------------------------------------------------------------
def test_stretch_resize_scales_the_geometry():
    tf = ImageTransform(32, 100, channels=1, geometry=True)
    img, geom = tf.prepare_geometry(box_image(BOX), decode_geometry(json.dumps(BOX)))
    assert img.shape == (32, 100, 1) and geom is not None
    np.testing.assert_allclose(geom["top"], [[20, 6], [50, 6], [80, 6]])
    np.testing.assert_allclose(geom["bottom"], [[20, 26], [50, 26], [80, 26]])
    assert (geom["width"], geom["height"]) == (100.0, 32.0)
    np.testing.assert_allclose(white_extent(img), (20, 80, 6, 26), atol=1)  # the pixels agree
    # the targets of the transformed record are those of the source record (a pure rescaling)
    a = geometry_targets_from_json(geom, 100, 32, 5)
    b = geometry_targets_from_json(BOX, 100, 32, 5)
    for key in ("centre", "scale", "theta"):
        torch.testing.assert_close(a[key], b[key])


def test_keep_ratio_scales_and_pads_on_the_right():
    tf = ImageTransform(32, 100, channels=1, keep_ratio=True, geometry=True)
    record = {"top": [[10.0, 8.0], [70.0, 8.0]], "bottom": [[10.0, 56.0], [70.0, 56.0]], "width": 80, "height": 64}
    img, geom = tf.prepare_geometry(box_image(record, 64, 80), record)
    assert img.shape == (32, 40, 1)  # 80×64 -> 40×32, padded to 100 by collate
    np.testing.assert_allclose(geom["top"], [[5, 4], [35, 4]])
    np.testing.assert_allclose(geom["bottom"], [[5, 28], [35, 28]])
    assert (geom["width"], geom["height"]) == (100.0, 32.0)  # the padded model input
    images, labels, geoms = tf.collate([(img, "w", geom)])
    assert images.shape == (1, 1, 32, 100) and geoms == [geom]
    # normalised (align_corners=True) centre of the first pair: x = (5 - 0.5) / 99 * 2 - 1, y = 0
    t = geometry_targets_from_json(geom, 100, 32, 2)
    torch.testing.assert_close(t["centre"][0], torch.tensor([4.5 / 99 * 2 - 1, (16 - 0.5) / 31 * 2 - 1]))


def test_scaling_and_translation_augmentation_moves_the_geometry_exactly():
    tf = ImageTransform(32, 100, channels=1, geometry=True)
    tf.augmentation = AlbumentationsPipeline([A.Affine(scale=1.25, translate_px={"x": 4, "y": -2},
                                                       border_mode=cv2.BORDER_CONSTANT, p=1.0)], seed=0)
    tf.augmentation.enable_keypoints(0)
    img, geom = tf.prepare_geometry(box_image(BOX), BOX)
    # resized box x 20..80, y 6..26; scaled by 1.25 about the image centre (50, 16), then shifted (4, -2)
    np.testing.assert_allclose(geom["top"], [[16.5, 1.5], [54.0, 1.5], [91.5, 1.5]], atol=1e-4)
    np.testing.assert_allclose(geom["bottom"], [[16.5, 26.5], [54.0, 26.5], [91.5, 26.5]], atol=1e-4)
    np.testing.assert_allclose(white_extent(img), (16.5, 91.5, 1.5, 26.5), atol=1)


def _pipeline(*transforms: object) -> ImageTransform:
    tf = ImageTransform(32, 100, channels=1, geometry=True)
    tf.augmentation = AlbumentationsPipeline(list(transforms), seed=0)
    tf.augmentation.enable_keypoints(0)
    return tf


def test_transforms_without_exact_keypoints_drop_the_geometry():
    from albumentations.core.type_definitions import Targets

    class FlipWithoutKeypoints(A.DualTransform):
        """A geometric transform that does not declare keypoint support."""

        _targets = (Targets.IMAGE, Targets.MASK)

        def apply(self, img: np.ndarray, **params: object) -> np.ndarray:
            return np.ascontiguousarray(img[:, ::-1])

        def get_transform_init_args_names(self) -> tuple[str, ...]:
            return ()

    flip = FlipWithoutKeypoints(p=1.0)
    grid = A.GridDistortion(num_steps=4, distort_limit=(-0.2, 0.2), p=1.0)
    assert not keypoints_exact(flip) and not keypoints_exact(grid)
    assert keypoints_exact(A.Affine(p=1.0)) and keypoints_exact(A.GaussianBlur(p=1.0))
    for t in (flip, grid):
        img, geom = _pipeline(t).prepare_geometry(box_image(BOX), BOX)
        assert geom is None and img.shape == (32, 100, 1), type(t).__name__
    # not drawn (p=0): the geometry survives; pixel-only transforms keep it exactly
    _, geom = _pipeline(A.OneOf([flip, grid], p=0.0), A.InvertImg(p=1.0)).prepare_geometry(box_image(BOX), BOX)
    assert geom is not None
    np.testing.assert_allclose(geom["top"], [[20, 6], [50, 6], [80, 6]], atol=1e-5)


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_presets_keep_or_drop_geometry_consistently(preset):
    tf = ImageTransform(32, 100, channels=1, augment=preset, geometry=True, seed=1)
    kept = 0
    for _ in range(20):
        img, geom = tf.prepare_geometry(box_image(BOX), BOX)
        if geom is None:
            continue
        kept += 1
        pts = np.concatenate([geom["top"], geom["bottom"]])
        assert np.isfinite(pts).all() and pts.shape == (6, 2)
        assert np.abs(pts - [[20, 6], [50, 6], [80, 6], [20, 26], [50, 26], [80, 26]]).max() < 15
    assert kept >= 8  # only GridDistortion (strong) drops geometry
    with pytest.raises(ValueError, match="geometry=True"):
        ImageTransform(32, 100, augment=preset).prepare_geometry(box_image(BOX), BOX)


def test_collate_gives_three_tuples_only_with_geometry():
    img = np.zeros((32, 100, 1), np.uint8)
    assert len(collate([(img, "a"), (img, "b")])) == 2
    out = collate([(img, "a", {"top": 1}), (img, "b", None)])
    assert len(out) == 3 and out[2] == [{"top": 1}, None] and out[0].shape == (2, 1, 32, 100)
    with pytest.raises(ValueError, match="every item"):
        collate([(img, "a"), (img, "b", None)])
    items = [(box_image(BOX), "box", BOX), (box_image(BOX), "plain")]
    geo = TransformedDataset(items, ImageTransform(32, 100, channels=1, geometry=True))
    assert len(geo[0]) == 3 and geo[0][2] is not None and geo[1][2] is None
    plain = TransformedDataset(items, ImageTransform(32, 100, channels=1))
    assert [len(plain[i]) for i in range(2)] == [2, 2]  # geometry dropped when it is off


# ---------------------------------------------------------------------------------------------------
# Run data, model and trainer
# ---------------------------------------------------------------------------------------------------
def tiny_scrn_overrides(synth_dirs: dict[str, Path], word_folder: Path, out: Path, geometry_loss: float,
                        geometry: bool = True) -> list[str]:
    return [
        f"data.train=[{{path: {synth_dirs['geo']}, kind: lmdb, geometry: {str(geometry).lower()}, ratio: 0.5}}, "
        f"{{path: {word_folder}, kind: folder, ratio: 0.5}}]",
        "data.workers=0", "data.augment=light", "data.val_fraction=0.25",
        "model.rectifier={name: scrn, num_points: 6, loc_channels: [8, 16], loc_hidden: 16}",
        "model.backbone.width_mult=0.25", "model.sequence.hidden_size=32", "model.decoder.hidden_size=32",
        f"model.geometry_loss={geometry_loss}",
        "train.steps=3", "train.batch_size=8", "train.val_every=100", "train.save_every=100",
        "train.log_every=1", "train.progress=false", "train.tensorboard=false", "train.threads=1",
        "train.device=cpu", f"train.out_dir={out}",
    ]


def scrn_config(synth_dirs, word_folder, out, geometry_loss=1.0, geometry=True):
    return load_config(REPO / "configs/models/scrn-mbv2-bilstm-attention.yaml",
                       tiny_scrn_overrides(synth_dirs, word_folder, out, geometry_loss, geometry))


def test_run_data_batches_carry_geometry_only_when_on(synth_dirs, word_folder, tmp_path):
    cfg = scrn_config(synth_dirs, word_folder, tmp_path)
    charset = Charset.from_spec(cfg.model.charset)
    run = build_run_data(cfg, charset, DistInfo(), geometry=True)
    images, labels, geoms = next(iter(run.train))
    assert images.shape == (8, 1, 32, 100) and len(labels) == len(geoms) == 8
    assert [g is None for g in geoms] == [False] * 4 + [True] * 4  # LMDB half first, then the folder half
    for g in geoms[:4]:
        if g is not None:  # None would mean an augmentation without exact keypoints (not in `light`)
            assert (g["width"], g["height"]) == (100.0, 32.0) and g["top"].shape == (10, 2)
    assert len(next(iter(run.val))) == 2  # validation stays 2-tuples (its LMDB share holds geometry)
    off = build_run_data(cfg, charset, DistInfo(), geometry=False)
    assert len(next(iter(off.train))) == 2


def test_geometry_term_is_added_in_training_and_logged(synth_dirs, word_folder, tmp_path):
    from strkit.engine.trainer import Trainer

    cfg = scrn_config(synth_dirs, word_folder, tmp_path / "run")
    trainer = Trainer(cfg)
    trainer.data = build_run_data(cfg, trainer.model.charset, trainer.dist, geometry=True)
    images, labels, geoms = next(iter(trainer.data.train))
    model = trainer.model.train()
    targets = model.encode(labels)
    geo = model.encode_geometry(geoms)
    assert geo is not None and geo["valid"].tolist() == [g is not None for g in geoms]
    torch.manual_seed(0)
    with_geo = model(images, {**targets, GEOMETRY_TARGETS: geo})
    torch.manual_seed(0)
    without = model(images, targets)
    assert with_geo.geometry_loss is not None and float(with_geo.geometry_loss.detach()) > 0.01
    torch.testing.assert_close(with_geo.loss, without.loss + with_geo.geometry_loss)
    torch.testing.assert_close(with_geo.logits, without.logits)
    # samples without geometry add nothing: an all-invalid batch gives exactly 0, not NaN
    none_valid = model.encode_geometry([None] * 7 + [geoms[0]])
    none_valid["valid"][:] = False
    zero = model(images, {**targets, GEOMETRY_TARGETS: none_valid}).geometry_loss
    assert zero is not None and float(zero.detach()) == 0.0 and zero.requires_grad
    assert model.encode_geometry([None] * 8) is None  # nothing to learn from: no targets at all
    model.eval()
    assert model(images, {**targets, GEOMETRY_TARGETS: geo}).geometry_loss is None  # training only

    loss = trainer.train_step(images, labels, geoms)
    assert loss is not None and np.isfinite(loss)
    assert trainer.last_geometry_loss is not None and trainer.last_geometry_loss > 0
    assert trainer.train_step(images, labels) is not None and trainer.last_geometry_loss is None

    Trainer(cfg).fit()  # 3 real steps through the fit loop (a fresh trainer: its schedule spans 3 steps)
    with (tmp_path / "run" / "metrics.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["key"] in ("loss", "geometry_loss")]
    geo_rows = [float(r["value"]) for r in rows if r["key"] == "geometry_loss"]
    assert len(geo_rows) == 3 and all(np.isfinite(v) and v > 0 for v in geo_rows)
    assert all(np.isfinite(float(r["value"])) for r in rows)


def test_without_geometry_loss_nothing_changes(synth_dirs, word_folder, tmp_path):
    from strkit.engine.trainer import Trainer

    cfg = scrn_config(synth_dirs, word_folder, tmp_path / "run", geometry_loss=0.0)
    trainer = Trainer(cfg)
    trainer.fit()
    with (tmp_path / "run" / "metrics.csv").open() as fh:
        keys = {r["key"] for r in csv.DictReader(fh)}
    assert "loss" in keys and "geometry_loss" not in keys


# ---------------------------------------------------------------------------------------------------
# Configuration errors
# ---------------------------------------------------------------------------------------------------
def test_geometry_loss_needs_the_scrn_rectifier():
    cfg = ModelConfig(rectifier={"name": "tps"}, geometry_loss=1.0)
    with pytest.raises(ConfigError, match=r"model.geometry_loss: .*needs the 'scrn' rectifier.*got 'tps'"):
        build_model(cfg, 32, 100, 1)
    with pytest.raises(ConfigError, match="model.geometry_loss: must be >= 0"):
        build_model(ModelConfig(rectifier={"name": "scrn"}, geometry_loss=-1.0), 32, 100, 1)
    assert build_model(ModelConfig(rectifier={"name": "tps"}), 32, 100, 1).geometry_loss == 0.0


def test_geometry_on_a_folder_source_is_refused(synth_dirs, word_folder, tmp_path):
    cfg = scrn_config(synth_dirs, word_folder, tmp_path)
    cfg.data.train[1].geometry = True
    charset = Charset.from_spec(cfg.model.charset)
    with pytest.raises(ConfigError, match=r"data.train\[1\].geometry: .*kind 'folder'.*only read from lmdb"):
        build_run_data(cfg, charset, DistInfo(), geometry=True)
    with pytest.raises(ConfigError, match="kind 'folder'"):  # even when the run does not use geometry
        build_run_data(cfg, charset, DistInfo(), geometry=False)
    with pytest.raises(ConfigError, match="only read from lmdb"):
        build_source(cfg.data.train[1], LabelFilter(charset, 25), 1, None, geometry=True)


def test_geometry_loss_without_a_geometry_source_is_refused(synth_dirs, word_folder, tmp_path):
    cfg = scrn_config(synth_dirs, word_folder, tmp_path, geometry=False)
    with pytest.raises(ConfigError, match=r"model.geometry_loss=1 needs word geometry.*--geometry"):
        build_run_data(cfg, Charset.from_spec(cfg.model.charset), DistInfo(), geometry=True)


def test_source_geometry_key_is_typed(tmp_path):
    cfg = load_config(None, ["data.train=[{path: x, kind: lmdb, geometry: true}]", "model.geometry_loss=0.5"])
    assert cfg.data.train[0].geometry is True and cfg.model.geometry_loss == 0.5
    with pytest.raises(ConfigError, match="geometry.*true/false"):
        load_config(None, ["data.train=[{path: x, kind: lmdb, geometry: 3}]"])
