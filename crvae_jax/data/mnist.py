"""MNIST splits, binarization, Larochelle's binarized MNIST and training order.

Splits follow the usual VAE protocol: train = first 50,000 official training
images, valid = last 10,000 official training images, test = the 10,000
official test images. Training uses dynamic binarization (a fresh Bernoulli
sample per batch, drawn inside the train step by
``crvae_jax.randomness.dynamic_binarize``); evaluation uses a fixed binarization, either our
seeded one or Larochelle's ``binarized_mnist_*.amat`` files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np

from .idx import MnistDataError, read_idx

__all__ = [
    "Split",
    "MnistSplits",
    "load_mnist",
    "STATIC_BINARIZATION_SEED",
    "static_binarize",
    "load_binarized_amat",
    "TEST_SETS",
    "load_eval_sets",
    "TrainOrder",
    "train_batch_indices",
]

IMAGE_SHAPE = (28, 28)

# Seed of np.random.default_rng used for the static (evaluation) binarization.
# Changing it changes the evaluation data, so results are only comparable
# between runs that used the same value.
STATIC_BINARIZATION_SEED = 0


class Split(NamedTuple):
    """One data split: ``images`` uint8 [N, 28, 28], ``labels`` uint8 [N]."""

    images: np.ndarray
    labels: np.ndarray


class MnistSplits(NamedTuple):
    """The three MNIST splits (uint8 intensities in 0..255, labels 0..9)."""

    train: Split
    valid: Split
    test: Split


def _check_split(images: np.ndarray, labels: np.ndarray, images_path, labels_path) -> None:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise MnistDataError(
            f"{images_path}: expected uint8 images of shape [N, 28, 28], got "
            f"{images.dtype} {images.shape}. Is this an MNIST image file?"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise MnistDataError(
            f"{labels_path}: expected uint8 labels of shape [N], got {labels.dtype} "
            f"{labels.shape}. Is this an MNIST label file?"
        )
    if len(images) != len(labels):
        raise MnistDataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
            "labels; the files do not belong together."
        )
    if labels.size and labels.max() > 9:
        raise MnistDataError(f"{labels_path}: label {labels.max()} is outside 0..9.")


def load_mnist(files: Mapping[str, os.PathLike], *, num_valid: int = 10_000) -> MnistSplits:
    """Read the four IDX files (as returned by ``locate_mnist_files``) into splits.

    The last ``num_valid`` official training images form the validation split,
    the rest the training split.
    """
    def read_pair(prefix: str):
        try:
            img_path = files[f"{prefix}-images-idx3-ubyte"]
            lab_path = files[f"{prefix}-labels-idx1-ubyte"]
        except KeyError as e:
            raise MnistDataError(
                f"load_mnist: files has no entry {e}; got {sorted(files)}."
            ) from None
        images, labels = read_idx(img_path), read_idx(lab_path)
        _check_split(images, labels, img_path, lab_path)
        return images, labels

    train_images, train_labels = read_pair("train")
    test_images, test_labels = read_pair("t10k")
    if not 0 < num_valid < len(train_images):
        raise MnistDataError(
            f"num_valid={num_valid} must be between 1 and {len(train_images) - 1} "
            f"(the training file has {len(train_images)} images)."
        )
    cut = len(train_images) - num_valid
    return MnistSplits(
        train=Split(train_images[:cut], train_labels[:cut]),
        valid=Split(train_images[cut:], train_labels[cut:]),
        test=Split(test_images, test_labels),
    )


def static_binarize(images: np.ndarray, seed: int = STATIC_BINARIZATION_SEED) -> np.ndarray:
    """Fixed binarization: pixel = 1 iff u < intensity / 255, u ~ U[0, 1).

    The uniforms are float64 draws from ``np.random.default_rng(seed)`` in
    row-major order, so the result is identical on every run and machine.
    Returns uint8 {0, 1} of the same shape as ``images``.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise MnistDataError(f"static_binarize expects uint8 intensities, got {images.dtype}.")
    rng = np.random.default_rng(seed)
    out = np.empty(images.shape, dtype=np.uint8)
    flat_in, flat_out = images.reshape(len(images), -1), out.reshape(len(out), -1)
    for start in range(0, len(images), 4096):  # chunked to bound memory; same stream
        block = flat_in[start:start + 4096]
        flat_out[start:start + 4096] = rng.random(block.shape) < block / 255.0
    return out


def load_binarized_amat(path: str | os.PathLike) -> np.ndarray:
    """Read Larochelle's ``binarized_mnist_{train,valid,test}.amat`` as uint8 [N, 28, 28].

    Each line holds 784 space-separated 0/1 values; anything else is an error
    naming the file and line.
    """
    path = Path(path)
    n_pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    if not path.is_file():
        raise MnistDataError(f"{path}: Larochelle binarized MNIST file not found.")
    rows = []
    with open(path, "rb") as f:
        lines = f.read().rstrip().split(b"\n")
    for lineno, line in enumerate(lines, start=1):
        tokens = line.split()
        joined = b"".join(tokens)
        row = np.frombuffer(joined, dtype=np.uint8) - np.uint8(ord("0"))
        if len(tokens) != n_pixels or len(joined) != n_pixels or (row.size and row.max() > 1):
            raise MnistDataError(
                f"{path}, line {lineno}: expected {n_pixels} space-separated 0/1 values, got "
                f"{len(tokens)} tokens starting {line[:40]!r}. The file is corrupt or not a "
                "binarized_mnist .amat file; re-download it."
            )
        rows.append(row)
    return np.stack(rows).reshape(-1, *IMAGE_SHAPE)


TEST_SETS = ("seeded_static", "larochelle")


def load_eval_sets(
    splits: MnistSplits,
    *,
    test_set: str,
    larochelle_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Binary validation and test images (uint8 {0,1} [N,28,28]) plus a description.

    ``test_set='seeded_static'``: ``static_binarize`` of our valid/test splits.
    ``test_set='larochelle'``: ``binarized_mnist_{valid,test}.amat`` from
    ``larochelle_dir`` (Larochelle's valid split is the same last 10,000
    training images, so the sizes must match ``splits``).
    """
    if test_set == "seeded_static":
        seed = STATIC_BINARIZATION_SEED
        valid = static_binarize(splits.valid.images, seed)
        test = static_binarize(splits.test.images, seed)
        desc = (f"MNIST valid (last {len(valid)} training images) and test, statically "
                f"binarized with numpy default_rng seed {seed}")
        return valid, test, desc
    if test_set == "larochelle":
        if larochelle_dir is None:
            raise MnistDataError(
                "test_set='larochelle' needs the directory holding binarized_mnist_valid.amat "
                "and binarized_mnist_test.amat (e.g. --config.data.larochelle_dir=/path)."
            )
        directory = Path(larochelle_dir).expanduser()
        out = []
        for split_name, split in (("valid", splits.valid), ("test", splits.test)):
            path = directory / f"binarized_mnist_{split_name}.amat"
            images = load_binarized_amat(path)
            if len(images) != len(split.images):
                raise MnistDataError(
                    f"{path}: has {len(images)} images but the MNIST {split_name} split has "
                    f"{len(split.images)}; is this the right file?"
                )
            out.append(images)
        desc = (f"Larochelle binarized_mnist_valid.amat / binarized_mnist_test.amat "
                f"from {directory}")
        return out[0], out[1], desc
    raise MnistDataError(f"Unknown test_set {test_set!r}; allowed values: {', '.join(TEST_SETS)}.")


class TrainOrder:
    """Training batch indices as a pure function of the step (resumable).

    Epoch ``e = step // steps_per_epoch`` uses the permutation
    ``np.random.default_rng([seed, e]).permutation(num_examples)``; each epoch's
    last partial batch is dropped. The current epoch's permutation is cached.
    """

    def __init__(self, *, num_examples: int, batch_size: int, seed: int):
        if batch_size <= 0 or num_examples <= 0:
            raise MnistDataError(
                f"need batch_size > 0 and num_examples > 0, got {batch_size}, {num_examples}"
            )
        if batch_size > num_examples:
            raise MnistDataError(
                f"batch_size={batch_size} is larger than the training set "
                f"({num_examples} examples)."
            )
        if seed < 0:
            raise MnistDataError(f"seed must be non-negative, got {seed}")
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.steps_per_epoch = num_examples // batch_size
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> np.ndarray:
        """The (cached) permutation of example indices for ``epoch``."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm, self._epoch = rng.permutation(self.num_examples), epoch
        return self._perm

    def indices(self, step: int) -> np.ndarray:
        """Example indices (int64 [batch_size]) of the batch for ``step``."""
        step = int(step)
        if step < 0:
            raise MnistDataError(f"step must be non-negative, got {step}")
        epoch, pos = divmod(step, self.steps_per_epoch)
        start = pos * self.batch_size
        return self.permutation(epoch)[start:start + self.batch_size].copy()


def train_batch_indices(step: int, *, num_examples: int, batch_size: int, seed: int) -> np.ndarray:
    """Stateless form of ``TrainOrder(...).indices(step)`` (recomputes the permutation)."""
    return TrainOrder(num_examples=num_examples, batch_size=batch_size, seed=seed).indices(step)
