"""benchmarks/winograd_probe.py: its Winograd F(2x2,3x3) form is the 3x3 convolution."""

import jax
import numpy as np
import pytest

from benchmarks import winograd_probe


@pytest.mark.parametrize("height,width", [(4, 4), (5, 5), (8, 8), (5, 8), (6, 3)])
def test_winograd_form_matches_a_stride1_same_convolution(height, width):
  rng = np.random.default_rng(height * 10 + width)
  x = rng.standard_normal((2, height, width, 3)).astype(np.float32)
  k = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
  want = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision="highest")
  got = winograd_probe.winograd_conv3x3(x, k)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
