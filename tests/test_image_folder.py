"""A folder of JPEG/PNG images: decoding, centre crop, scaling, and a clear error naming
the file for each kind of bad input."""

import numpy as np
import pytest
from PIL import Image

from crvae_jax.data import ImageFolder, ImageFolderError, image_folder


def _rgb(path, size=(80, 64), colour=(255, 0, 0), fmt=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", size, colour).save(path, format=fmt)
  return path


@pytest.fixture(name="folder")
def _folder(tmp_path):
  root = tmp_path / "images"
  _rgb(root / "a.png", colour=(255, 0, 0))
  _rgb(root / "sub" / "b.jpg", size=(64, 100), colour=(0, 0, 255))
  _rgb(root / "c.PNG", size=(200, 120), colour=(0, 255, 0))
  return root


def record_logs(monkeypatch) -> list:
  """The messages crvae_jax.data.image_folder logs (absl) from now on, as strings."""
  logs = []

  class _Recorder:
    def info(self, msg, *args):
      logs.append(str(msg) % args if args else str(msg))
    warning = info

  monkeypatch.setattr(image_folder, "logging", _Recorder())
  return logs


def test_loads_every_image_in_sorted_order_scaled_to_minus_one_one(folder):
  images = ImageFolder(folder, image_size=64)
  assert [p.name for p in images.paths] == ["a.png", "c.PNG", "b.jpg"]
  batch = images.load([0, 1, 2])
  assert batch.shape == (3, 64, 64, 3) and batch.dtype == np.float32
  np.testing.assert_allclose(batch[0].mean((0, 1)), [1, -1, -1], atol=1e-6)  # red PNG
  np.testing.assert_allclose(batch[1].mean((0, 1)), [-1, 1, -1], atol=1e-6)  # green
  np.testing.assert_allclose(batch[2].mean((0, 1)), [-1, -1, 1], atol=0.02)  # blue JPEG


def test_centre_crop_keeps_the_middle(tmp_path):
  # 192x64: left and right thirds black, the middle square white -> white (squashing
  # the whole image instead would average to grey).
  pixels = np.zeros((64, 192, 3), np.uint8)
  pixels[:, 64:128] = 255
  Image.fromarray(pixels).save(tmp_path / "wide.png")
  out = ImageFolder(tmp_path, image_size=32).load([0])[0]
  # (bicubic weights reach one source pixel past the crop box at the outer columns)
  assert out[:, 1:-1].min() > 0.99 and out.mean() > 0.95, out.mean()


def test_prefetch_matches_load_in_order(folder):
  images = ImageFolder(folder, image_size=64, num_workers=2)
  batches = [[2, 0], [1, 1], [0, 2]]
  got = list(images.prefetch(batches, depth=1))
  assert len(got) == 3
  for b, g in zip(batches, got):
    np.testing.assert_array_equal(g, images.load(b))


def test_missing_and_empty_folders(tmp_path):
  with pytest.raises(ImageFolderError, match="not found"):
    ImageFolder(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ImageFolderError, match="no JPEG/PNG"):
    ImageFolder(tmp_path / "empty")


def test_non_image_files_are_named_or_skipped_when_allowed(folder, monkeypatch):
  (folder / "list_attr_celeba.txt").write_text("not an image")
  with pytest.raises(ImageFolderError, match="list_attr_celeba.txt"):
    ImageFolder(folder)
  logs = record_logs(monkeypatch)
  images = ImageFolder(folder, allow_other_files=True)
  assert len(images) == 3
  assert any("skipping 1 non-image" in l and "list_attr_celeba.txt" in l for l in logs)


def test_corrupt_and_truncated_images_are_named(folder):
  (folder / "garbage.jpg").write_bytes(b"\x00\x01 definitely not a jpeg" * 10)
  with pytest.raises(ImageFolderError, match="garbage.jpg.*not a readable image"):
    ImageFolder(folder)
  (folder / "garbage.jpg").unlink()
  # A JPEG cut in half: its header reads, so the scan passes, but decoding fails.
  noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)
  Image.fromarray(noise).save(folder / "cut.jpg", quality=95)
  full = (folder / "cut.jpg").read_bytes()
  (folder / "cut.jpg").write_bytes(full[:len(full) // 2])
  images = ImageFolder(folder)
  index = [p.name for p in images.paths].index("cut.jpg")
  with pytest.raises(ImageFolderError, match="cut.jpg.*cannot decode"):
    images.load([index])
  with pytest.raises(ImageFolderError, match="cut.jpg"):  # also through the prefetcher
    list(images.prefetch([[0], [index], [1]]))


def test_a_png_named_jpg_is_fine_but_a_gif_is_not(folder):
  _rgb(folder / "really_png.jpg", fmt="PNG")
  assert len(ImageFolder(folder)) == 4
  Image.new("P", (64, 64)).save(folder / "anim.png", format="GIF")
  with pytest.raises(ImageFolderError, match="anim.png: is a GIF"):
    ImageFolder(folder)


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGBA", 4)])
def test_wrong_channel_count_is_named_or_converted(folder, mode, channels):
  Image.new(mode, (64, 64), 200 if mode == "L" else (0, 255, 0, 128)).save(folder / "odd.png")
  with pytest.raises(ImageFolderError, match=f"odd.png: image mode {mode} \\({channels} "):
    ImageFolder(folder)
  images = ImageFolder(folder, convert_to_rgb=True)
  out = images.load([[p.name for p in images.paths].index("odd.png")])[0]
  expected = [200 / 127.5 - 1] * 3 if mode == "L" else [-1, 1, -1]
  np.testing.assert_allclose(out.mean((0, 1)), expected, atol=1e-4)


def test_too_small_images_are_named_unless_upscaling_allowed(folder):
  _rgb(folder / "tiny.png", size=(32, 48))
  with pytest.raises(ImageFolderError, match="tiny.png: 32x48 pixels is smaller than"):
    ImageFolder(folder, image_size=64)
  images = ImageFolder(folder, image_size=64, allow_upscaling=True)
  assert images.load(range(len(images))).shape == (4, 64, 64, 3)
