"""Stage2 networks: 64x64 Stage1 output -> 128x128 (or 224x224) image (docs/models.md, section 5).

StackGAN stage-II style, without text conditioning. The paper's release does not give the
architecture; these are our choices.

Generator (c = `width`, paper scale 128):
  [B, 64, 64, 3] (224 only: bilinear resize to [B, 56, 56, 3], see below)
  conv3x3 (3 -> c, bias) ReLU                                  [B, S, S, c]
  conv4x4/2 (-> 2c) BN ReLU                                    [B, S/2, S/2, 2c]
  conv4x4/2 (-> 4c) BN ReLU  (skipped for encode_to=32)        [B, S/4, S/4, 4c]
  conv3x3 (-> 4c) BN ReLU  ("joint" conv of StackGAN)          [B, e, e, 4c]
  num_res_blocks x [conv3x3 BN ReLU conv3x3 BN, + input, ReLU]
  n x up-step to 4c/2, 4c/4, ... channels:
      upsample="nearest": nearest x2, conv3x3, BN, ReLU (StackGAN)
      upsample="deconv":  4x4/2 transposed conv, BN, ReLU (the CelebA variant)
  conv3x3 (-> 3, bias) tanh                                    [B, size, size, 3]
e = encode_to: 16, or 32 for the CelebA VAE-GAN (one stride-2 conv). Size 128: 16 -> 128
is three x2 steps (two from 32). Size 224 is not 64 * 2^k: the input is first resized to
56x56 (bilinear), encoded to 14x14 (28x28 with encode_to=32) and upsampled four (three)
times: 14 -> 28 -> 56 -> 112 -> 224 (`generator_plan`).

Discriminator (d = `width`, paper scale 64): 4x4/2 convs (padding 1) with LeakyReLU(0.2),
BN on every layer but the first, channels d, 2d, 4d, 8d, 8d, ... halving the size while it
is above 7: 128 -> 64 -> 32 -> 16 -> 8 -> 4. A 7x7 map (224 -> ... -> 14 -> 7) takes one
4x4 valid conv (stride 1) to 4x4. Then Dense(4*4*C -> 1): the logit (sigmoid = P(real)).
"""

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from crvae_jax.models import layers

INPUT_SIZE = 64  # the Stage1 output
ENCODE_TO = (16, 32)
UPSAMPLE = ("nearest", "deconv")


def generator_plan(image_size: int, encode_to: int = 16):
  """(input size the 64x64 image is resized to, number of stride-2 convs, number of x2
  up-steps) for an output of `image_size`; ValueError naming the sizes that work."""
  if encode_to not in ENCODE_TO:
    raise ValueError(f"model.encode_to must be one of {ENCODE_TO}, got {encode_to!r}")
  num_down = 2 if encode_to == 16 else 1
  for start in (INPUT_SIZE, 56):  # 56 = 7 * 8: reaches 224 = 56 * 4
    ratio, rem = divmod(image_size, start)
    if not rem and ratio >= 2 and ratio & (ratio - 1) == 0:  # a power of two
      return start, num_down, num_down + ratio.bit_length() - 1
  raise ValueError(f"model.image_size={image_size}: Stage2 outputs 64 * 2^k (128, 256) "
                   "or 56 * 2^k (112, 224) pixels")


def discriminator_plan(image_size: int) -> list:
  """Spatial sizes after each of the discriminator's convs, ending at 4."""
  sizes, size = [], image_size
  while size > 7:
    if size % 2:
      raise ValueError(f"model.image_size={image_size}: the discriminator halves it down "
                       f"to 4x4 or 7x7, but meets the odd size {size}")
    size //= 2
    sizes.append(size)
  if size == 7:
    sizes.append(4)  # 4x4 valid conv: 7 - 4 + 1
  if sizes[-1] != 4:
    raise ValueError(f"model.image_size={image_size} does not reach 4x4 (sizes {sizes})")
  return sizes


class ResidualBlock(nn.Module):
  """x + (conv3x3 BN ReLU conv3x3 BN)(x), then ReLU (StackGAN's ResBlock)."""
  conv_impl: str = "auto"
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda: layers.batch_norm(train, self.bn_axis_name)
    conv = functools.partial(layers.conv, x.shape[-1], 3, 1, 1, impl=self.conv_impl)
    h = nn.relu(bn()(conv()(x)))
    return nn.relu(x + bn()(conv()(h)))


class Stage2Generator(nn.Module):
  """[B, 64, 64, 3] in [-1, 1] -> [B, image_size, image_size, 3] (tanh)."""
  image_size: int = 128
  width: int = 128
  encode_to: int = 16
  num_res_blocks: int = 4
  upsample: str = "nearest"
  conv_impl: str = "auto"
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.upsample not in UPSAMPLE:
      raise ValueError(f"model.upsample must be one of {UPSAMPLE}, got {self.upsample!r}")
    if x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
      raise ValueError(f"Stage2 takes [B, 64, 64, 3] Stage1 images, got {x.shape}")
    start, num_down, num_up = generator_plan(self.image_size, self.encode_to)
    bn = lambda: layers.batch_norm(train, self.bn_axis_name)
    conv = functools.partial(layers.conv, impl=self.conv_impl)
    # Under 'cpu', convs with Cout < 8 (the last one; the last up-steps at CPU scale) run
    # XLA's own kernel: at 128x128 the matmul + shift-add form for them is several times
    # slower (`benchmarks/ab_gan_step.py`); 'onednn' runs them on oneDNN. The same
    # parameters either way.
    narrow_impl = lambda out: ("xla" if out < 8 and layers.resolve_conv_impl(self.conv_impl)
                               == "cpu" else self.conv_impl)
    c = self.width
    if start != INPUT_SIZE:
      x = jax.image.resize(x, (x.shape[0], start, start, 3), "linear")  # [B, 56, 56, 3]
    h = nn.relu(conv(c, 3, 1, 1, use_bias=True)(x))  # [B, S, S, c]
    for i in range(num_down):
      h = nn.relu(bn()(conv(c * 2 ** (i + 1), 4, 2, 1)(h)))  # [B, S/2^(i+1), ., 2^(i+1) c]
    h = nn.relu(bn()(conv(4 * c, 3, 1, 1)(h)))  # [B, e, e, 4c]
    for _ in range(self.num_res_blocks):
      h = ResidualBlock(self.conv_impl, self.bn_axis_name)(h, train)
    for i in range(num_up):
      out = max(4 * c // 2 ** (i + 1), 1)
      if self.upsample == "nearest":
        h = h.repeat(2, axis=1).repeat(2, axis=2)  # [B, 2h, 2w, C]
        h = conv(out, 3, 1, 1, impl=narrow_impl(out))(h)
      else:
        h = layers.ConvTranspose(out, 4, 2, 1, impl=self.conv_impl)(h)  # [B, 2h, 2w, out]
      h = nn.relu(bn()(h))
    return jnp.tanh(conv(3, 3, 1, 1, use_bias=True, impl=narrow_impl(3))(h))  # [B, S, S, 3]


class Stage2Discriminator(nn.Module):
  """[B, image_size, image_size, 3] in [-1, 1] -> real/fake logits [B]."""
  image_size: int = 128
  width: int = 64
  conv_impl: str = "auto"
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"the Stage2 discriminator of model.image_size={self.image_size} "
                       f"got images {x.shape}")
    h = x
    size = self.image_size
    for i, next_size in enumerate(discriminator_plan(self.image_size)):
      stride, padding = (2, 1) if next_size * 2 == size else (1, 0)  # 7 -> 4: valid
      h = layers.conv(self.width * 2 ** min(i, 3), 4, stride, padding,
                      use_bias=(i == 0), impl=self.conv_impl)(h)  # [B, next, next, C]
      if i > 0:
        h = layers.batch_norm(train, self.bn_axis_name)(h)
      h = layers.leaky_relu(h, 0.2)
      size = next_size
    return nn.Dense(1)(h.reshape(h.shape[0], -1))[:, 0]  # [B, 4*4*C] -> [B]
