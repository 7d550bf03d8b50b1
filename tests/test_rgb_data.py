"""RGB training data: augmentation and batches as functions of the step, the emoji set
(synthetic tarballs here, the real npm package in one test; the other sets and the
held-out split in test_emoji_sets.py), tfds and the source errors."""

import hashlib
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from crvae_jax.data import emoji, rgb
from crvae_jax.data.image_source import ArrayImages
from crvae_jax.data.mnist import TrainOrder
from experiments.configs import rgb as rgb_configs


def _images(n, size, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def test_random_crops_are_windows_of_the_image_and_flips_mirror_it():
  images = _images(16, 72)
  out = rgb.augment(images, np.random.default_rng(0), flip=True)
  assert out.shape == (16, 64, 64, 3) and out.dtype == np.float32
  flipped, positions = 0, set()
  for image, crop in zip(images, out):
    windows = [(y, x, m) for y in range(9) for x in range(9) for m in (False, True)
               if np.array_equal(crop[:, ::-1] if m else crop, image[y:y + 64, x:x + 64])]
    assert len(windows) == 1, "each output is exactly one (mirrored) 64x64 window"
    flipped += windows[0][2]
    positions.add(windows[0][:2])
  assert 0 < flipped < 16  # probability 1/2 each
  assert len(positions) > 4  # offsets drawn per image
  same = rgb.augment(_images(4, 64), np.random.default_rng(1), flip=False)
  np.testing.assert_array_equal(same, _images(4, 64))  # 64, no flip: identity
  with pytest.raises(ValueError, match="cannot be cropped"):
    rgb.augment(_images(1, 32), np.random.default_rng(0), flip=False)


def test_batches_are_a_function_of_the_step_so_a_resumed_run_sees_the_same_images():
  source = ArrayImages(((_images(40, 64) + 1) * 127.5).astype(np.uint8), "random")
  order = TrainOrder(num_examples=40, batch_size=8, seed=3)
  full = list(rgb.training_batches(source, order, 0, 10, flip=True, seed=3))
  tail = list(rgb.training_batches(source, order, 6, 10, flip=True, seed=3))
  assert len(full) == 10 and len(tail) == 4
  for a, b in zip(full[6:], tail):
    np.testing.assert_array_equal(a, b)
  expected = rgb.augment(source.load(order.indices(7)), np.random.default_rng([3, 7]),
                         flip=True)
  np.testing.assert_array_equal(full[7], expected)
  assert not np.array_equal(full[0], full[5])  # epoch 1 reshuffles and redraws flips
  # A process of a multi-process run decodes only its rows, cropped and flipped as here.
  rows = slice(4, 8)
  part = list(rgb.training_batches(source, order, 6, 10, flip=True, seed=3, rows=rows))
  for a, b in zip(full[6:], part):
    np.testing.assert_array_equal(a[rows], b)


def _png(image: Image.Image) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  return buf.getvalue()


def _emoji_tarball(path, members):
  with tarfile.open(path, "w:gz") as tf:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tf.addfile(info, io.BytesIO(data))
  return path


def test_emoji_are_composited_on_white_and_tarballs_are_verified(tmp_path):
  rgba = np.zeros((64, 64, 4), np.uint8)
  rgba[:32] = (200, 10, 20, 255)  # opaque top half, transparent bottom half
  rgba[32:, :, 3] = 0
  la = Image.new("LA", (64, 64), (0, 128))  # black at half alpha
  prefix = emoji.EMOJI_SETS["google"].member_prefix
  path = _emoji_tarball(tmp_path / "e.tgz", {
      prefix + "b.png": _png(Image.fromarray(rgba, "RGBA")),
      prefix + "a.png": _png(la),
      "package/README.md": b"not an image"})
  images, names, sets = emoji.decode_tarball(path, check_sha256=False)  # sorted: a, b
  assert names.tolist() == ["a", "b"] and sets.tolist() == ["google", "google"]
  assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(images[1, 0, 0], (200, 10, 20))
  np.testing.assert_array_equal(images[1, 63, 0], (255, 255, 255))  # transparent: white
  assert abs(int(images[0, 0, 0, 0]) - 127) <= 1  # half black over white
  with pytest.raises(emoji.EmojiDataError, match="sha256 .* is not that of "
                     "emoji-datasource-google-16.0.0.tgz"):
    emoji.decode_tarball(path)
  with pytest.raises(emoji.EmojiDataError, match="e.tgz: sha256"):
    emoji.load_emoji(tarball=path)
  with pytest.raises(emoji.EmojiDataError, match="allow_download=False.*emoji_tarball"):
    emoji.load_emoji(cache_dir=tmp_path / "empty", allow_download=False)


def test_the_real_emoji_set_from_npm_is_verified_and_cached(tmp_path, monkeypatch):
  # npm pack; sha256 of the tarball, the array and the names
  images = emoji.load_emoji(cache_dir=tmp_path).images
  assert images.shape == (3786, 64, 64, 3)
  assert 0.3 < float((images == 255).mean()) < 0.6  # on white, not blank
  def no_npm(*args, **kwargs):
    raise AssertionError("the cache should have been used")
  monkeypatch.setattr(emoji, "npm_pack", no_npm)
  np.testing.assert_array_equal(emoji.load_emoji(cache_dir=tmp_path).images, images)
  # The default set is bit-identical to the one the committed emoji results trained on.
  assert hashlib.sha256(images.tobytes()).hexdigest() == (
      "4d7dcb6041f5b93d54200590ac8934be94b5320ee30c23a1ab5c292f0b019612")
  c = rgb_configs.get_config("emoji_crvaegan,cpu")
  c.data.cache_dir = str(tmp_path)
  c.data.emoji_sets = "google"  # (the CPU config trains on google and twitter)
  assert c.data.emoji_split == "train"
  smileys = rgb.open_source(c.data)  # (and on the smileys only)
  c.data.emoji_categories = ""
  train = rgb.open_source(c.data)
  c.data.emoji_split = "all"
  every = rgb.open_source(c.data)
  np.testing.assert_array_equal(every.images, images)
  assert len(train) == 3786 - 337 and len(every) == 3786
  assert len(smileys) == 150  # of the 169 'Smileys & Emotion' emoji, 19 are held out


def test_a_prepared_tfds_dataset_is_read_and_a_missing_one_is_named(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (5, 80, 70, 3), dtype=np.uint8)

  class TinyImages(tfds.core.GeneratorBasedBuilder):
    """Raw uint8 tensors: encoding tfds.features.Image needs TensorFlow, not installed."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"image": tfds.features.Tensor(shape=(80, 70, 3), dtype=np.uint8)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(5):
        yield i, {"image": pixels[i]}

  TinyImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  c = rgb_configs.get_config("celeba_vaegan")
  c.data.tfds_name, c.data.tfds_data_dir = "tiny_images", str(tmp_path)
  source = rgb.open_source(c.data)
  assert len(source) == 5
  decoded = {tuple(source.decode(i)[32, 32]) for i in range(5)}
  assert len(decoded) == 5 and source.load([0, 1]).shape == (2, 64, 64, 3)
  c.data.tfds_name = "no_such_dataset"
  with pytest.raises(rgb.RgbDataError, match="(?s)'no_such_dataset'.*tfds build no_such_dataset"):
    rgb.open_source(c.data)


def test_source_errors_name_the_config_key():
  c = rgb_configs.get_config("celeba_vaegan")
  c.data.source = "folder"
  with pytest.raises(rgb.RgbDataError, match="data.image_dir"):
    rgb.open_source(c.data)
  c.data.source = "imagenet"
  with pytest.raises(rgb.RgbDataError, match="data.source='imagenet'"):
    rgb.open_source(c.data)
