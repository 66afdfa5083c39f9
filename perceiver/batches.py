"""Normalisation, augmentation and batches: uint8 images to the (x float32 in [-1, 1], y int32) batches Keras trains
on. Decoding is in images.py, names and the split in records.py; dataset.py is the front door.

Pixel scaling happens in one place, `normalize` (uint8 [0, 255] -> float32 [-1, 1]). `make_dataset` gives a
tf.data.Dataset under TensorFlow and a keras.utils.PyDataset otherwise.

Keras and TensorFlow are imported inside the functions that need them: importing Keras loads its backend
(TensorFlow by default, seconds and hundreds of MB), and dataset.py, which imports this module, must stay quick to
import for `python dataset.py --help`, the summary and code that only reads names or decodes images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# === Constants ===
PIXEL_SCALE = 127.5  # normalize: x / PIXEL_SCALE - PIXEL_OFFSET
PIXEL_OFFSET = 1.0


# === Normalisation and augmentation ===
def normalize(images):
    """The one place pixels are scaled: uint8 [0, 255] -> float32 [-1, 1] as x / 127.5 - 1.

    Works on numpy arrays, and on TensorFlow tensors (inside tf.data) with the same constants.
    """
    if type(images).__module__.startswith("tensorflow"):
        import tensorflow as tf  # lazy (module docstring); already loaded when given a tensor

        return tf.cast(images, tf.float32) / PIXEL_SCALE - PIXEL_OFFSET
    return np.asarray(images).astype(np.float32) / np.float32(PIXEL_SCALE) - np.float32(PIXEL_OFFSET)


def denormalize(images):
    """Inverse of `normalize` for display: float [-1, 1] -> uint8 [0, 255]."""
    a = (np.asarray(images, np.float32) + PIXEL_OFFSET) * PIXEL_SCALE
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


@dataclass
class Augment:
    """Random training augmentation that keeps laterality: never a plain horizontal flip.

    Args:
        rotation_deg: float. Rotation drawn from +-rotation_deg degrees. Defaults to 10.0.
        shift: float. Shift drawn from +-shift of the width (x) and height (y). Defaults to 0.08.
        scale: float. Zoom factor drawn from 1 +- scale (below 1; never negative, so never a mirror).
            Defaults to 0.1.
        brightness: float. Intensity offset drawn from +-brightness of the full pixel range. Defaults to 0.1.
        contrast: float. Deviations from each image's mean multiplied by 1 +- contrast. Defaults to 0.15.
        flip_swap: bool. With probability 1/2 flip an image left-right AND swap its label left <-> right (a
            mirrored left knee looks like a right knee). Only for the classes exactly ["left", "right"]; off by
            default because a mirrored knee is not a real one. Defaults to False.

    Pixels moved in from outside the image are black (-1 after normalisation), so no mirrored content appears
    at the border. Intensities are clipped to [-1, 1].
    """

    rotation_deg: float = 10.0
    shift: float = 0.08
    scale: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.15
    flip_swap: bool = False

    # train.py's flag (and config.json's setting) for each strength: `--aug-rotation` sets rotation_deg, and so on
    SETTINGS = {"aug_rotation": "rotation_deg", "aug_shift": "shift", "aug_scale": "scale",
                "aug_brightness": "brightness", "aug_contrast": "contrast"}

    LIMITS = {"rotation_deg": 180.0, "shift": 1.0, "scale": 1.0, "brightness": 1.0, "contrast": 1.0}  # [0, limit)

    @classmethod
    def setting_problem(cls, settings):
        """The first strength in `settings` (train.py's args as a dict) outside its range, as one sentence naming
        its flag (`--aug-shift 1.5 must be a number in [0, 1).`); None when all are in range."""
        for key, field in cls.SETTINGS.items():
            value = settings.get(key)
            if value is not None and not _in_range(value, cls.LIMITS[field]):
                return f"--{key.replace('_', '-')} {value!r} must be a number in [0, {cls.LIMITS[field]:g})."
        return None

    @classmethod
    def from_settings(cls, settings):
        """The augmentation a run's settings ask for (train.py's args as a dict, or config.json's "train"), or None
        when `augment` is off. A setting a run folder's config.json lacks (written before it existed) takes the
        default, which is what that run was trained with."""
        if not settings.get("augment", True):
            return None
        strengths = {field: settings[key] for key, field in cls.SETTINGS.items() if settings.get(key) is not None}
        return cls(flip_swap=bool(settings.get("flip_swap", False)), **strengths)

    def describe(self):
        """One phrase for reports: "rotation +-10 deg, shift +-0.08, scale +-0.1, brightness +-0.1, contrast +-0.15"."""
        text = (f"rotation +-{self.rotation_deg:g} deg, shift +-{self.shift:g}, scale +-{self.scale:g}, "
                f"brightness +-{self.brightness:g}, contrast +-{self.contrast:g}")
        return text + (", flip-swap" if self.flip_swap else "")

    def __post_init__(self):
        for name, limit in self.LIMITS.items():
            value = getattr(self, name)
            if not _in_range(value, limit):
                raise ValueError(f"Augment {name}={value!r} must be a number in [0, {limit:g}).")
        if not isinstance(self.flip_swap, bool):
            raise ValueError(f"Augment flip_swap={self.flip_swap!r} must be True or False.")


def _in_range(value, limit):
    """Whether an augmentation strength is a number (not a bool) in [0, limit)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < limit


def _swap_table(class_names):
    """Index map that swaps left and right; ValueError unless the classes are exactly left and right."""
    names = list(class_names)
    if sorted(names) != ["left", "right"]:
        raise ValueError(f"flip_swap needs the classes to be exactly ['left', 'right'], not {names}: a flip "
                         "only has a known label for laterality.")
    table = np.zeros(2, dtype=np.int32)
    table[names.index("left")], table[names.index("right")] = names.index("right"), names.index("left")
    return table


def _flip_and_swap(images, labels, which, swap):
    """The only horizontal flip in this module: it always swaps the label of every image it flips."""
    images[which] = images[which][:, :, ::-1, :]
    labels[which] = swap[labels[which]]
    return images, labels


def _affine(images, theta, scale, tx, ty, fill=-1.0):
    """Rotates, scales and shifts each image about its centre with bilinear sampling; outside pixels get fill."""
    b, h, w, c = images.shape
    padded = np.full((b, h + 2, w + 2, c), fill, np.float32)  # a border of fill: taps outside land on it
    padded[:, 1:-1, 1:-1] = images
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    cos = (np.cos(theta) / scale).astype(np.float32)[:, None, None]
    sin = (np.sin(theta) / scale).astype(np.float32)[:, None, None]
    dx = xx[None] - np.float32(cx) - tx.astype(np.float32)[:, None, None]  # (batch, h, w)
    dy = yy[None] - np.float32(cy) - ty.astype(np.float32)[:, None, None]
    src_x = cos * dx + sin * dy + np.float32(cx)  # inverse map: output pixel -> source position
    src_y = cos * dy - sin * dx + np.float32(cy)
    x0, y0 = np.floor(src_x), np.floor(src_y)
    wx, wy = (src_x - x0)[..., None], (src_y - y0)[..., None]  # (batch, h, w, 1)
    x0, y0 = x0.astype(np.int32), y0.astype(np.int32)
    cols = [np.clip(x0 + d, -1, w) + 1 for d in (0, 1)]  # padded column of the left and right taps
    rows = [(np.clip(y0 + d, -1, h) + 1) * (w + 2) for d in (0, 1)]
    base = (np.arange(b, dtype=np.int32) * ((h + 2) * (w + 2)))[:, None, None]
    index = np.stack([base + r + col for r in rows for col in cols])  # (4, batch, h, w)
    v00, v01, v10, v11 = np.take(padded.reshape(-1, c), index, axis=0)  # each (batch, h, w, c)
    top = v00 + (v01 - v00) * wx
    bottom = v10 + (v11 - v10) * wx
    return top + (bottom - top) * wy


def augment_batch(images, labels, rng, aug, class_names):
    """Applies `aug` to a normalised batch in numpy; returns new (images float32, labels int32).

    Args:
        images: float array (batch, height, width, channels) in [-1, 1].
        labels: int array (batch,) of class indices into class_names.
        rng: np.random.Generator.
        aug: Augment.
        class_names: list[str]. Needed to swap labels when aug.flip_swap.
    """
    x = np.array(images, dtype=np.float32, copy=True)
    y = np.array(labels, dtype=np.int32, copy=True)
    if x.ndim != 4 or y.shape != (x.shape[0],):
        raise ValueError(f"augment_batch expects images (batch, h, w, c) and labels (batch,), got {x.shape} and "
                         f"{y.shape}.")
    swap = _swap_table(class_names) if aug.flip_swap else None
    b, h, w, _ = x.shape
    theta = np.deg2rad(rng.uniform(-aug.rotation_deg, aug.rotation_deg, b))
    scale = rng.uniform(1 - aug.scale, 1 + aug.scale, b)
    tx = rng.uniform(-aug.shift, aug.shift, b) * w
    ty = rng.uniform(-aug.shift, aug.shift, b) * h
    contrast = rng.uniform(1 - aug.contrast, 1 + aug.contrast, b).astype(np.float32)[:, None, None, None]
    brightness = (2 * rng.uniform(-aug.brightness, aug.brightness, b)).astype(np.float32)[:, None, None, None]
    flip = rng.random(b) < 0.5
    if aug.rotation_deg or aug.scale or aug.shift:
        x = _affine(x, theta, scale, tx, ty)
    if aug.contrast or aug.brightness:
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * contrast + mean + brightness
        np.clip(x, -1.0, 1.0, out=x)
    if swap is not None:
        x, y = _flip_and_swap(x, y, flip, swap)
    return x, y


# === Batches ===
def _check_arrays(images, labels, batch_size, seed):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (n, height, width, channels), got {images.dtype} {images.shape}.")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels shape {labels.shape} does not match {images.shape[0]} images.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r} must be a positive integer.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed {seed!r} must be a non-negative integer.")
    return images, labels.astype(np.int32)


def make_dataset(images_uint8, labels_int, *, batch_size, training, seed=0, augment=None, class_names=None,
                 backend=None, workers=1, epoch=None, epochs=None):
    """Batches (x float32 (B, H, W, C) in [-1, 1], y int32 (B,)) for Keras.

    Training: shuffled with `seed` and reshuffled every epoch, augmented when `augment` is given. Otherwise: in
    order, no augmentation. The last partial batch is always kept.

    With `epoch` set, the batches start at that epoch and each epoch's order and augmentation come from (seed, epoch)
    alone, drawn in numpy: a run resumed at epoch e gets exactly the batches it would have had, and the order is the
    same on one device or several (tf.distribute rewrites a tf.data shuffle). The tf.data dataset then holds epochs
    `epoch` .. `epochs - 1` back to back (`epochs` defaults to `epoch + 1`: one epoch), for one `fit(...,
    steps_per_epoch=ceil(n / batch_size))` over the whole run (train.py); the PyDataset moves to the next epoch in
    `on_epoch_end`, so it needs no `epochs`.

    Args:
        images_uint8: np.ndarray. uint8 (n, height, width, channels).
        labels_int: np.ndarray. Class indices (n,).
        batch_size: int.
        training: bool.
        seed: int. Seeds shuffling and augmentation. Defaults to 0.
        augment: Augment | None. Applied only when training. Defaults to None.
        class_names: list[str] | None. Required for augment.flip_swap.
        backend: str | None. "tensorflow" gives a tf.data.Dataset, anything else a keras.utils.PyDataset.
            Defaults to keras.backend.backend().
        workers: int. PyDataset threads preparing batches (augmentation is numpy, ~0.5 ms an image on one
            core; raise this to feed a GPU). Batches stay deterministic. tf.data tunes itself. Defaults to 1.
        epoch: int | None. The first epoch (see above). Defaults to None: TensorFlow's own reshuffling.
        epochs: int | None. Under TensorFlow with `epoch` set, the epoch to stop before. Defaults to `epoch + 1`.
    """
    images, labels = _check_arrays(images_uint8, labels_int, batch_size, seed)
    augment = augment if training else None
    if augment is not None and augment.flip_swap:
        _swap_table(class_names or [])
    if backend is None:
        import keras  # lazy: loads its backend (module docstring)

        backend = keras.backend.backend()
    if epoch is not None and (not isinstance(epoch, (int, np.integer)) or epoch < 0):
        raise ValueError(f"epoch {epoch!r} must be a non-negative integer or None.")
    if epochs is not None and (epoch is None or not isinstance(epochs, (int, np.integer)) or epochs <= epoch):
        raise ValueError(f"epochs {epochs!r} needs epoch set and must be greater than it (epoch {epoch!r}).")
    if backend == "tensorflow":
        span = None if epoch is None else range(int(epoch), int(epochs if epochs is not None else epoch + 1))
        return _tf_dataset(images, labels, int(batch_size), training, int(seed), augment, class_names, span)
    batches = _py_dataset_class()(images, labels, batch_size=int(batch_size), training=training, seed=int(seed),
                                  augment=augment, class_names=class_names, workers=int(workers))
    if epoch is not None:
        batches.epoch = int(epoch)
        batches._order = batches._permutation()
    return batches


def _tf_dataset(images, labels, batch_size, training, seed, augment, class_names, span=None):
    """`span`: the epochs to hold, as a range, each in the order (seed, epoch) gives; None: one epoch, reshuffled by
    tf.data on every pass."""
    import tensorflow as tf  # lazy: heavy, and only the tensorflow backend takes this path (module docstring)

    n, h, w, c = images.shape
    images_t, labels_t = tf.constant(images), tf.constant(labels)
    batches = math.ceil(n / batch_size)
    if training and span is not None:  # the same order as the PyDataset path for each (seed, epoch)
        orders = np.stack([np.random.default_rng([seed, e]).permutation(n) for e in span])  # (epochs, n)
        ds = tf.data.Dataset.from_tensor_slices(orders).flat_map(
            lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))  # batches end with each epoch
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(span) * batches))
    else:
        ds = tf.data.Dataset.range(n)
        if training:
            ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)
    ds = ds.map(lambda i: (normalize(tf.gather(images_t, i)), tf.gather(labels_t, i)),
                num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        def numpy_augment(x, y, s):
            rng = np.random.default_rng(int(s) % 2**63)
            return augment_batch(x, y, rng, augment, class_names)

        def tf_augment(xy, s):
            x, y = tf.numpy_function(numpy_augment, [xy[0], xy[1], s], [tf.float32, tf.int32], stateful=False)
            x.set_shape((None, h, w, c))
            y.set_shape((None,))
            return x, y

        if span is None:
            seeds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
        else:
            seeds = tf.data.Dataset.from_tensor_slices(np.concatenate(
                [np.random.default_rng([seed, e, 1]).integers(0, 2**62, size=batches) for e in span]))
        ds = tf.data.Dataset.zip((ds, seeds)).map(tf_augment, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


_PY_DATASET = None


def _py_dataset_class():
    global _PY_DATASET
    if _PY_DATASET is not None:
        return _PY_DATASET
    import keras  # lazy: loads its backend (module docstring); so the class is built on first use

    class ArrayBatches(keras.utils.PyDataset):
        """Backend-neutral batches from in-memory arrays; the order for epoch e comes from (seed, e)."""

        def __init__(self, images, labels, *, batch_size, training, seed, augment, class_names, **kwargs):
            super().__init__(**kwargs)
            # === Config ===
            self.images, self.labels = images, labels
            self.batch_size, self.training, self.seed = batch_size, training, seed
            self.augment, self.class_names = augment, class_names
            self.epoch = 0
            self._order = self._permutation()

        def _permutation(self):
            n = len(self.images)
            if not self.training:
                return np.arange(n)
            return np.random.default_rng([self.seed, self.epoch]).permutation(n)

        def __len__(self):
            return math.ceil(len(self.images) / self.batch_size)

        def __getitem__(self, i):
            if not 0 <= i < len(self):
                raise IndexError(f"batch {i} out of range for {len(self)} batches")
            idx = self._order[i * self.batch_size:(i + 1) * self.batch_size]
            x, y = normalize(self.images[idx]), self.labels[idx]
            if self.augment is not None:
                rng = np.random.default_rng([self.seed, self.epoch, i, 1])
                x, y = augment_batch(x, y, rng, self.augment, self.class_names)
            return x, y

        def on_epoch_end(self):
            if self.training:
                self.epoch += 1
                self._order = self._permutation()

    _PY_DATASET = ArrayBatches
    return ArrayBatches
