"""Image transforms: any word crop -> a normalised ``C×H×W`` tensor, with optional augmentation.

The hot path of data loading. One :class:`ImageTransform` turns an image of any common layout
(gray ``H×W``, ``H×W×1``, gray+alpha ``H×W×2``, RGB ``H×W×3``, RGBA ``H×W×4``; ``uint8``, 16-bit or
float) into a float32 tensor ``C×H×W`` in ``[-1, 1]`` (``x / 127.5 - 1``):

1. to ``uint8`` (16-bit images are scaled by 1/257; floats in ``[0, 1]`` by 255);
2. to the target channels (alpha is composited over white; RGB -> gray uses the ITU-R 601 weights);
3. resize with OpenCV to ``img_h × img_w`` (stretch), or with ``keep_ratio`` to height ``img_h`` and
   width ``min(img_w, round(w * img_h / h))``, later padded on the right with ``pad_value``.
   ``INTER_AREA`` when both sides shrink, ``INTER_LINEAR`` otherwise. Tall images (``h > w``, e.g.
   vertical text) are not rotated: they are resized like any other crop;
4. augmentation (a preset of :data:`AUGMENTATIONS`) on the *resized* ``uint8`` image. Augmenting the
   small image is cheaper than augmenting the source crop (1.4× on IIIT5K_train crops, far more on
   large ones: crops reach 700×2500 px) and keeps the strength of blur/noise constant relative to
   the text height;
5. normalisation and padding.

For training, steps 1-4 run per sample (:meth:`ImageTransform.prepare`, ``uint8``) and step 5 runs once
per batch in :func:`collate`, which is much cheaper than per-sample float tensors.
:class:`TransformedDataset` and :meth:`ImageTransform.collate` wire this up for a ``DataLoader``.

Word geometry (``ImageTransform(geometry=True)``, for the ScRN rectifier's auxiliary loss): a sample may
carry the synthetic generator's boundary polylines (``{"top", "bottom", "width", "height"}``, continuous
pixel coordinates, see :func:`strkit.data.lmdb.format.decode_geometry`). :meth:`ImageTransform.prepare_geometry`
moves them with the image: scaled by the resize of step 3, then passed through the augmentation as
albumentations keypoints, and returned in the *model input* frame (``width = W``, ``height = H``: the
right padding of ``keep_ratio`` adds nothing on the left, so coordinates are unchanged by it). A sample
on which a geometric transform without exact keypoint support was applied gets ``None`` (no
geometry) rather than a wrong one (see :meth:`AlbumentationsPipeline.apply_with_keypoints`). Items are
then ``(image, label, geometry or None)`` and :func:`collate` returns ``(images, labels, geometries)``.

Randomness: augmentation uses albumentations' own generators (not numpy's or torch's global RNG),
seeded by ``ImageTransform(seed=...)``. A forked ``DataLoader`` worker inherits the parent's generator
state, so every worker must be reseeded (:func:`seed_worker` does this from the per-worker torch seed);
otherwise all workers would apply the same "random" augmentations. A training loader goes further: its
sampler hands each sample a :class:`SeededIndex` whose seed is a pure function of (run seed, rank, step,
position in the batch), and :class:`TransformedDataset` reseeds the augmentation from it before that
sample (:meth:`ImageTransform.seed_sample`), so the augmentation of a sample depends neither on the
worker that draws it nor on where a run was resumed.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from strkit.data import str_augment  # noqa: F401  (registers the randaug preset)
from strkit.data.augment import AUGMENTATIONS, AlbumentationsPipeline, Augment, Identity


def build_augmentation(name: str, channels: int = 1, seed: int | None = None,
                       options: Mapping[str, Any] | None = None) -> Augment:
    """Build the augmentation preset ``name`` (see :data:`AUGMENTATIONS`) for gray or RGB images, with the
    preset's own ``options`` (e.g. ``{n: 2, m: 5}`` for ``randaug``)."""
    factory = AUGMENTATIONS.get(name)
    try:
        return factory(channels=channels, seed=seed, **dict(options or {}))
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        raise ValueError(f"augmentation preset '{name}' does not take the options {sorted(options or {})} "
                         f"(data.augment_options): {exc}") from None


# ----------------------------------------------------------------------------------------------
# Pixel format helpers
# ----------------------------------------------------------------------------------------------
def to_uint8(image: np.ndarray) -> np.ndarray:
    """Any numeric image -> ``uint8`` of the same shape.

    ``uint16`` is scaled by 1/257 (65535 -> 255); ``bool`` maps to 0/255; floats whose maximum is at
    most 1 are taken as ``[0, 1]`` and scaled by 255, other floats as ``[0, 255]``; other integer types
    are clipped to ``[0, 255]``.
    """
    dtype = image.dtype
    if dtype == np.uint8:
        return image
    if dtype == np.uint16:
        return cv2.convertScaleAbs(image, alpha=1.0 / 257.0)
    if dtype == np.bool_:
        return image.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(dtype, np.floating):
        scale = 255.0 if image.size and float(np.nanmax(image)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(image) * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(dtype, np.integer):
        return np.clip(image, 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {dtype}: expected uint8, uint16, bool, integer or float")


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite ``colour`` (``H×W`` or ``H×W×3`` uint8) over white with ``alpha`` (``H×W`` uint8)."""
    if alpha.min() == 255:
        return np.ascontiguousarray(colour)
    a = alpha.astype(np.float32) * (1.0 / 255.0)
    if colour.ndim == 3:
        a = a[:, :, None]
    return ((colour.astype(np.float32) - 255.0) * a + 255.5).astype(np.uint8)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """``uint8`` image of any layout -> ``H×W`` (``channels=1``) or ``H×W×3`` RGB (``channels=3``).

    Accepted layouts: ``H×W``, ``H×W×1``, ``H×W×2`` (gray + alpha), ``H×W×3`` (RGB), ``H×W×4`` (RGBA).
    Alpha is composited over a white background.
    """
    if image.ndim == 3:
        c = image.shape[2]
        if c == 1:
            image = image[:, :, 0]
        elif c == 2:
            image = _over_white(image[:, :, 0], image[:, :, 1])
        elif c == 4:
            image = _over_white(image[:, :, :3], image[:, :, 3])
        elif c != 3:
            raise ValueError(f"image of shape {image.shape} has {c} channels: expected H×W, H×W×1, "
                             "H×W×2 (gray+alpha), H×W×3 (RGB) or H×W×4 (RGBA)")
    elif image.ndim != 2:
        raise ValueError(f"image of shape {image.shape} has {image.ndim} dimensions: expected H×W or H×W×C")
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)


# ----------------------------------------------------------------------------------------------
# The transform
# ----------------------------------------------------------------------------------------------
class ImageTransform:
    """Word crop (numpy) -> normalised float tensor ``C×H×W`` in ``[-1, 1]``.

    Args:
        img_h: output height ``H``.
        img_w: output width ``W``.
        channels: 1 (gray) or 3 (RGB).
        keep_ratio: keep the aspect ratio (resize to height ``H``, width ``min(W, round(w*H/h))``, pad
            on the right to ``W``) instead of stretching to ``H×W``.
        augment: name of an augmentation preset in :data:`AUGMENTATIONS` (``none``, ``light``,
            ``strong``, ``randaug``).
        pad_value: value of the right padding, in normalised units (``-1`` black ... ``1`` white).
        seed: seed of the augmentation generators (``None``: fresh entropy). See :func:`seed_worker`.
        geometry: samples may carry word geometry (see the module docstring): the augmentation is built
            to move keypoints, and :class:`TransformedDataset` yields ``(image, label, geometry)``
            through :meth:`prepare_geometry`.
        augment_options: options of the preset (``data.augment_options``, e.g. ``{n: 2, m: 5}``).
    """

    def __init__(self, img_h: int, img_w: int, channels: int = 1, keep_ratio: bool = False,
                 augment: str = "none", pad_value: float = 0.0, seed: int | None = None,
                 geometry: bool = False, augment_options: Mapping[str, Any] | None = None) -> None:
        if img_h < 1 or img_w < 1:
            raise ValueError(f"image size must be positive, got img_h={img_h}, img_w={img_w}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
        if not -1.0 <= pad_value <= 1.0:
            raise ValueError(f"pad_value is in normalised units and must lie in [-1, 1], got {pad_value}")
        self.img_h = img_h
        self.img_w = img_w
        self.channels = channels
        self.keep_ratio = keep_ratio
        self.augment_name = augment
        self.pad_value = float(pad_value)
        augmentation = build_augmentation(augment, channels=channels, seed=seed, options=augment_options)
        self.augmentation: Augment | None = None if isinstance(augmentation, Identity) else augmentation
        self.geometry = bool(geometry)
        if self.geometry and self.augmentation is not None:
            if not isinstance(self.augmentation, AlbumentationsPipeline):
                raise ValueError(f"augmentation preset '{augment}' is not an albumentations pipeline, so the word "
                                 f"geometry cannot follow it: use a preset built on AlbumentationsPipeline "
                                 f"(none, light, strong) or turn the geometry off (model.geometry_loss=0)")
            self.augmentation.enable_keypoints(seed)

    def __repr__(self) -> str:
        return (f"ImageTransform(img_h={self.img_h}, img_w={self.img_w}, channels={self.channels}, "
                f"keep_ratio={self.keep_ratio}, augment={self.augment_name!r}, pad_value={self.pad_value}, "
                f"geometry={self.geometry})")

    def reseed(self, seed: int | None) -> None:
        """Reseed the augmentation generators (called in each DataLoader worker by :func:`seed_worker`)."""
        reseed = getattr(self.augmentation, "reseed", None)
        if reseed is not None:
            reseed(seed)

    def seed_sample(self, seed: int) -> None:
        """Make the augmentation of the next sample a function of ``seed`` alone (see
        :class:`SeededIndex`): :meth:`AlbumentationsPipeline.seed_sample`, else the augmentation's own
        ``reseed``; a no-op without augmentation."""
        seed_sample = getattr(self.augmentation, "seed_sample", None)
        if seed_sample is not None:
            seed_sample(seed)
        elif self.augmentation is not None:
            self.reseed(seed)

    def target_width(self, h: int, w: int) -> int:
        """Width of the resized image (before padding) for a source image of ``h×w`` pixels."""
        if not self.keep_ratio:
            return self.img_w
        return min(self.img_w, max(1, round(w * self.img_h / h)))

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Steps 1-4: any image -> resized, augmented ``uint8`` array ``H×w×C`` (``w <= W``; ``w == W``
        unless ``keep_ratio``). Not padded, not normalised: :func:`collate` does both per batch.

        Raises:
            ValueError: the image is empty (a zero-size side) or of an unsupported layout/dtype.
        """
        image = self._resize(image)
        if self.augmentation is not None:
            image = self.augmentation(image)
        return image[:, :, None] if image.ndim == 2 else image

    def prepare_geometry(self, image: np.ndarray, geometry: Mapping[str, Any] | None
                         ) -> tuple[np.ndarray, dict[str, Any] | None]:
        """:meth:`prepare` that moves the sample's word geometry with the image.

        Args:
            image: the source image (any layout :meth:`prepare` accepts).
            geometry: ``{"top": n×2, "bottom": n×2, "width": w0, "height": h0}`` (continuous pixel
                coordinates of the ``w0 × h0`` source image, as :func:`strkit.data.lmdb.format.decode_geometry`
                returns), or ``None``.

        Returns:
            ``(uint8 H×w×C image as from prepare, geometry)`` where the geometry is
            ``{"top": n×2 float64, "bottom": n×2 float64, "width": W, "height": H}`` in continuous pixel
            coordinates of the padded ``H × W`` model input (what
            :func:`strkit.models.rectifiers.scrn.geometry_targets_from_json` expects with ``img_w = W``,
            ``img_h = H``), or ``None`` when the sample had none or an augmentation without exact
            keypoint support was applied to it.

        Raises:
            ValueError: as :meth:`prepare`; or this transform was built without ``geometry=True`` while
                it augments.
        """
        if geometry is None:
            return self.prepare(image), None
        if self.augmentation is not None and not self.geometry:
            raise ValueError("ImageTransform.prepare_geometry: build the transform with geometry=True so that "
                             "its augmentation moves the word geometry with the image")
        image = self._resize(image)
        h, w = image.shape[:2]  # img_h × target width
        top = np.asarray(geometry["top"], dtype=np.float64).reshape(-1, 2)
        bottom = np.asarray(geometry["bottom"], dtype=np.float64).reshape(-1, 2)
        scale = np.array([w / float(geometry["width"]), h / float(geometry["height"])])
        points = np.concatenate([top, bottom]) * scale  # continuous coordinates of the resized image
        moved: np.ndarray | None = points
        if self.augmentation is not None:
            assert isinstance(self.augmentation, AlbumentationsPipeline)
            # albumentations maps keypoints in the pixel-index frame (pixel centres at integers)
            image, shifted = self.augmentation.apply_with_keypoints(image, points - 0.5)
            moved = None if shifted is None else shifted + 0.5
        image = image[:, :, None] if image.ndim == 2 else image
        if moved is None:
            return image, None
        n = len(top)
        return image, {"top": moved[:n], "bottom": moved[n:], "width": float(self.img_w),
                       "height": float(self.img_h)}

    def _resize(self, image: np.ndarray) -> np.ndarray:
        """Steps 1-3 of :meth:`prepare`: any image -> ``uint8`` ``H×w`` or ``H×w×3`` (not augmented)."""
        if not isinstance(image, np.ndarray):
            raise ValueError(f"expected a numpy array image, got {type(image).__name__}")
        if image.ndim not in (2, 3):
            raise ValueError(f"image of shape {image.shape} has {image.ndim} dimension(s): expected "
                             "H×W or H×W×C")
        if image.size == 0:
            raise ValueError(f"empty image of shape {image.shape}: every word crop needs at least 1×1 "
                             "pixels (check the record or file it came from)")
        if image.dtype != np.uint8:
            image = to_uint8(image)
        if not (image.ndim == 2 and self.channels == 1):
            image = to_channels(image, self.channels)
        h, w = image.shape[:2]
        tw = self.target_width(h, w)
        if h != self.img_h or w != tw:
            shrink = h >= self.img_h and w >= tw
            image = cv2.resize(image, (tw, self.img_h),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return image

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """Any image (see :func:`to_channels`) -> float32 tensor ``C×H×W`` in ``[-1, 1]``."""
        return collate([(self.prepare(image), "")], width=self.img_w, pad_value=self.pad_value)[0][0]

    def collate(self, batch: Sequence[tuple[Any, ...]]) -> Batch:
        """:func:`collate` with this transform's width and pad value (a DataLoader ``collate_fn``)."""
        return collate(batch, width=self.img_w, pad_value=self.pad_value)


# ----------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------
Batch = (tuple[torch.Tensor, list[str]] | tuple[torch.Tensor, list[str], list[dict[str, Any] | None]]
         | tuple[torch.Tensor, list[str], list[dict[str, Any] | None], list[Any]])
"""``(images B×C×H×W, labels)``, ``(images, labels, geometries)`` for items that carry geometry, or
``(images, labels, geometries, teacher targets)`` for items that carry both slots."""


def collate(batch: Sequence[tuple[Any, ...]], width: int | None = None, pad_value: float = 0.0) -> Batch:
    """Stack ``(image, label)`` items into ``(B×C×H×W float32 tensor, labels)``, and
    ``(image, label, geometry)`` items into ``(images, labels, geometries)`` (a list of the items'
    geometry records or ``None``, in batch order).

    Items are either float tensors ``C×H×W`` (stacked as they are) or ``uint8`` arrays ``H×w×C`` from
    :meth:`ImageTransform.prepare`, which are copied into one ``uint8`` batch, normalised once
    (``x / 127.5 - 1``) and padded on the right to ``width`` (default: the widest item) with
    ``pad_value`` (normalised units).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    sizes = {len(item) for item in batch}
    if len(sizes) != 1 or not sizes <= {2, 3, 4}:
        raise ValueError(f"cannot collate items of {sorted(sizes)} elements: every item must be (image, label), "
                         f"every item (image, label, geometry) or every item (image, label, geometry, teacher)")
    images = [item[0] for item in batch]
    labels = [item[1] for item in batch]
    stacked = _stack_images(images, width, pad_value)
    if sizes == {2}:
        return stacked, labels
    geometries = [item[2] for item in batch]
    if sizes == {3}:
        return stacked, labels, geometries
    return stacked, labels, geometries, [item[3] for item in batch]


def _stack_images(images: Sequence[Any], width: int | None, pad_value: float) -> torch.Tensor:
    """The image part of :func:`collate`: items -> B×C×H×W float32 tensor."""
    first = images[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(list(images))
    h, c = first.shape[0], first.shape[2]
    widths = [img.shape[1] for img in images]
    full = max(widths) if width is None else width
    buf = np.empty((len(images), c, h, full), dtype=np.uint8)
    for i, img in enumerate(images):
        if img.shape[0] != h or img.shape[2] != c or img.shape[1] > full:
            raise ValueError(f"cannot batch an image of shape {img.shape} with {first.shape} "
                             f"(batch width {full})")
        buf[i, :, :, : img.shape[1]] = img.transpose(2, 0, 1)
    # numpy, single-threaded: torch's intra-op threads stall on a busy 2-core machine (or next to
    # OpenCV's pool); these two element-wise ops took 7-10 ms per batch in the loader instead of ~10 us.
    out = np.empty(buf.shape, dtype=np.float32)
    np.divide(buf, np.float32(127.5), out=out, dtype=np.float32)
    out -= np.float32(1.0)
    for i, w in enumerate(widths):
        if w < full:
            out[i, :, :, w:] = pad_value
    return torch.from_numpy(out)


class SeededIndex(NamedTuple):
    """A dataset index with the seed of that sample's augmentation (what a training sampler yields, so
    that augmentation is reproducible whichever worker loads the sample and after a resume)."""

    index: int
    seed: int


class TransformedDataset(Dataset):
    """Applies an image transform to the image of each ``(image, label)`` item of ``dataset``.

    With an :class:`ImageTransform` (and ``batch_normalise``), items are ``(uint8 H×w×C array, label)``
    from :meth:`ImageTransform.prepare`, to be batched by :meth:`ImageTransform.collate`, which
    normalises and pads once per batch. With any other callable (or ``batch_normalise=False``), items
    are ``(transform(image), label)``.

    Geometry: with an :class:`ImageTransform` built with ``geometry=True`` (and ``batch_normalise``),
    items are ``(image, label, geometry or None)`` from :meth:`ImageTransform.prepare_geometry`, the
    geometry taken from the third element of a source item (``None`` for 2-element items). Otherwise
    any element after the label is dropped, so validation and evaluation batches stay 2-tuples.

    Teacher targets: with ``teacher``, items are ``(image, label, geometry or None, target or None)``,
    the target taken from the fourth element of a source item
    (:class:`~strkit.data.teacher_cache.TeacherTargets`), ``None`` for shorter items.

    An index may be a :class:`SeededIndex`: the transform's augmentation is then reseeded from its seed
    (:meth:`ImageTransform.seed_sample`) before the sample is transformed.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[np.ndarray], Any],
                 batch_normalise: bool = True, teacher: bool = False) -> None:
        self.dataset = dataset
        self.teacher = bool(teacher)
        self.transform = transform
        self._apply: Callable[[np.ndarray], Any] = transform
        self._geometry: ImageTransform | None = None
        if batch_normalise and isinstance(transform, ImageTransform):
            self._apply = transform.prepare
            if transform.geometry:
                self._geometry = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int | SeededIndex) -> tuple[Any, ...]:
        if isinstance(index, SeededIndex):
            for part in (self.transform, self.dataset):  # the augmentation, and sources with randoms of their own
                seed_sample = getattr(part, "seed_sample", None)
                if seed_sample is not None:
                    seed_sample(index.seed)
            index = index.index
        item = self.dataset[index]
        image, label = item[0], item[1]
        if self._geometry is not None:
            prepared, geometry = self._geometry.prepare_geometry(image, item[2] if len(item) > 2 else None)
            if not self.teacher:
                return prepared, label, geometry
        else:
            prepared, geometry = self._apply(image), None
        if self.teacher:
            return prepared, label, geometry, item[3] if len(item) > 3 else None
        return prepared, label

    def reseed(self, seed: int | None) -> None:
        """Reseed the transform's augmentation, if it has any."""
        reseed = getattr(self.transform, "reseed", None)
        if reseed is not None:
            reseed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV thread per worker, and augmentation reseeded from the
    worker's torch seed (``base_seed + worker_id``, which the loader's generator makes deterministic).

    A worker ignores SIGTERM and SIGINT: a signal sent to the whole process group (``timeout``, a batch
    scheduler, Ctrl-C) reaches the main process too, which finishes its step, saves, and shuts its workers
    down; a worker that died of it first would make the main process fail before it could save."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    reseed = getattr(info.dataset, "reseed", None)
    if reseed is not None:
        reseed(info.seed % 2**32)
