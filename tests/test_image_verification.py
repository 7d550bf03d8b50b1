"""A JPEG cut short after a valid header passes the header scan; the verification pass
(data.verify_images) finds it at the start and names every such file, or leaves them out
(data.skip_bad_images)."""

import numpy as np
import pytest
from PIL import Image

from crvae_jax import config_checks
from crvae_jax.data import ImageFolder, ImageFolderError
from crvae_jax.data.rgb import open_source
from test_image_folder import record_logs
from experiments.configs import rgb


def _folder(tmp_path, num_good=3, num_truncated=2):
  rng = np.random.default_rng(0)
  for i in range(num_good + num_truncated):
    path = tmp_path / f"{i:02d}.jpg"
    Image.fromarray(rng.integers(0, 255, (80, 80, 3), np.uint8)).save(path, quality=95)
    if i >= num_good:  # keep the header and the first part of the scan
      data = path.read_bytes()
      path.write_bytes(data[:len(data) // 2])
  return tmp_path


def test_truncated_jpegs_pass_the_header_scan_but_not_verification(tmp_path, monkeypatch):
  folder = _folder(tmp_path)
  logs = record_logs(monkeypatch)
  images = ImageFolder(folder, image_size=64)  # headers only: accepted
  with pytest.raises(ImageFolderError, match=r"03.jpg: cannot decode"):
    images.load([3])  # ... and found only when its batch is decoded
  with pytest.raises(ImageFolderError, match=r"2 of 5 image\(s\) cannot be decoded: "
                     r".*03.jpg, .*04.jpg .*skip_bad_images=True"):
    ImageFolder(folder, image_size=64, verify_images=True)
  assert sum("cannot decode" in line for line in logs) == 2  # every bad file is named


def test_skip_bad_images_leaves_them_out_and_counts_them(tmp_path, monkeypatch):
  config = rgb.get_config("celeba_vaegan,cpu")
  config.data.source, config.data.image_dir = "folder", str(_folder(tmp_path))
  config.data.skip_bad_images = True
  with pytest.raises(config_checks.ConfigError, match="config.data.skip_bad_images=True.*"
                     "needs data.verify_images=True"):
    config_checks.check_rgb_config(config, 1)
  config.data.verify_images = True
  config_checks.check_rgb_config(config, 1)
  logs = record_logs(monkeypatch)
  images = open_source(config.data)
  assert [p.name for p in images.paths] == ["00.jpg", "01.jpg", "02.jpg"]
  assert any("skipping 2 image(s) that cannot be decoded" in line for line in logs), logs
  assert images.load([0, 1, 2]).shape == (3, 64, 64, 3)
