"""Random-access RGB image sets as model input: the shared decode / batch / prefetch.

A source has ``len(source)`` and ``decode(i) -> float32 [S, S, 3] in [-1, 1]``; this base
class adds ``load`` (a batch) and ``prefetch`` (batches decoded ahead on worker threads).
Subclasses: ``ImageFolder`` (JPEG/PNG files), ``ArrayImages`` (an in-memory uint8 array),
``rgb.TfdsImages`` (a prepared tensorflow-datasets dataset).
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from PIL import Image, ImageOps


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square, resize (bicubic) to size x size: float32 [S, S, 3] in
    [-1, 1]. The image must already be RGB."""
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC,
                             centering=(0.5, 0.5))
    return np.asarray(image, np.float32) / 127.5 - 1.0


class RandomAccessImages:
    """Base class: subclasses set ``num_workers`` and implement ``__len__``, ``decode``."""

    num_workers: int = 8

    def __len__(self) -> int:
        raise NotImplementedError

    def decode(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def load(self, indices: Iterable[int],
             pool: concurrent.futures.Executor | None = None) -> np.ndarray:
        """Images [n, S, S, 3] float32 in [-1, 1], decoded on `pool` when given."""
        indices = [int(i) for i in indices]
        images = pool.map(self.decode, indices) if pool else map(self.decode, indices)
        return np.stack(list(images))

    def prefetch(self, index_batches: Iterable, depth: int = 2,
                 transform: Optional[Callable[[int, np.ndarray], np.ndarray]] = None
                 ) -> Iterator[np.ndarray]:
        """Yield `load(b)` for each b in index_batches, in order, decoding up to `depth`
        batches ahead on `num_workers` threads so the training step is not kept waiting.
        `transform(n, batch)` (n = 0, 1, ...: the batch's position) runs on the worker
        too (augmentation). A decoding error is raised here, in the consumer, naming the
        file."""
        ready: queue.Queue = queue.Queue(maxsize=depth)
        stop = threading.Event()
        done = object()

        def produce():
            with concurrent.futures.ThreadPoolExecutor(self.num_workers) as pool:
                try:
                    for n, batch in enumerate(index_batches):
                        item = self.load(batch, pool)
                        if transform is not None:
                            item = transform(n, item)
                        while not stop.is_set():
                            try:
                                ready.put(item, timeout=0.1)
                                break
                            except queue.Full:
                                pass
                        if stop.is_set():
                            return
                    ready.put(done)
                except Exception as e:  # pylint: disable=broad-except
                    ready.put(e)  # re-raised in the consumer

        thread = threading.Thread(target=produce, daemon=True, name="image-prefetch")
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is done:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()


class ArrayImages(RandomAccessImages):
    """An in-memory uint8 [N, S, S, 3] array (e.g. the emoji set) as a source."""

    def __init__(self, images_uint8: np.ndarray, description: str):
        images_uint8 = np.asarray(images_uint8)
        if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3 or \
                images_uint8.shape[1] != images_uint8.shape[2]:
            raise ValueError(f"{description}: expected uint8 [N, S, S, 3], got "
                             f"{images_uint8.shape}")
        self.images, self.description = images_uint8, description
        self.image_size = images_uint8.shape[1]
        self.num_workers = 1

    def __len__(self) -> int:
        return len(self.images)

    def decode(self, index: int) -> np.ndarray:
        return self.images[index].astype(np.float32) / 127.5 - 1.0

    def load(self, indices, pool=None) -> np.ndarray:
        del pool  # one vectorised gather
        return self.images[np.asarray(list(indices), np.int64)].astype(np.float32) / 127.5 - 1.0
