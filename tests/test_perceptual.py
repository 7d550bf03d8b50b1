"""The perceptual networks compute torchvision's features from torchvision's weights.

torchvision is not installable here, so the references below are hand-written PyTorch
copies of vgg11 and resnet50 with torchvision's module names: their state_dict keys are
torchvision's, and the .npz they convert to is what a real checkpoint converts to.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crvae_jax.models import perceptual
from experiments import convert_torchvision_weights as convert

torch = pytest.importorskip(
    "torch", reason="PyTorch is a test-only dependency; install torch==2.13.0 (CPU) to "
    "run the conversion check")
tnn = torch.nn


def torch_vgg11():
  """torchvision.models.vgg11's `features` (all 21 modules) and a stand-in classifier
  (torchvision's is 4096-wide; only its keys matter: they must be ignored)."""
  model = tnn.Module()
  layers, cin = [], 3
  for item in perceptual.VGG11_CONFIG:
    if item == "M":
      layers.append(tnn.MaxPool2d(2, 2))
    else:
      layers += [tnn.Conv2d(cin, item, 3, padding=1), tnn.ReLU(inplace=True)]
      cin = item
  model.features = tnn.Sequential(*layers)
  model.classifier = tnn.Sequential(tnn.Linear(512, 8), tnn.ReLU(), tnn.Dropout(),
                                    tnn.Linear(8, 8), tnn.ReLU(), tnn.Dropout(),
                                    tnn.Linear(8, 10))
  return model


class TorchBottleneck(tnn.Module):
  """torchvision.models.resnet.Bottleneck (v1.5: stride in conv2)."""

  def __init__(self, cin, planes, stride):
    super().__init__()
    self.conv1 = tnn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.conv3 = tnn.Conv2d(planes, 4 * planes, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(4 * planes)
    self.relu = tnn.ReLU(inplace=True)
    self.downsample = None
    if stride != 1 or cin != 4 * planes:
      self.downsample = tnn.Sequential(tnn.Conv2d(cin, 4 * planes, 1, stride, bias=False),
                                       tnn.BatchNorm2d(4 * planes))

  def forward(self, x):
    h = self.relu(self.bn1(self.conv1(x)))
    h = self.relu(self.bn2(self.conv2(h)))
    h = self.bn3(self.conv3(h))
    return self.relu(h + (x if self.downsample is None else self.downsample(x)))


class TorchResNet50(tnn.Module):
  """torchvision.models.resnet50; forward returns every stage's output."""

  def __init__(self):
    super().__init__()
    self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = tnn.BatchNorm2d(64)
    self.relu = tnn.ReLU(inplace=True)
    self.maxpool = tnn.MaxPool2d(3, 2, 1)
    cin = 64
    for i, (planes, blocks, stride) in enumerate(perceptual.RESNET50_STAGES, start=1):
      stage = [TorchBottleneck(cin, planes, stride)]
      stage += [TorchBottleneck(4 * planes, planes, 1) for _ in range(blocks - 1)]
      setattr(self, f"layer{i}", tnn.Sequential(*stage))
      cin = 4 * planes
    self.avgpool = tnn.AdaptiveAvgPool2d(1)
    self.fc = tnn.Linear(2048, 10)

  def forward(self, x):
    out = {"stem": self.maxpool(self.relu(self.bn1(self.conv1(x))))}
    for i, name in enumerate(perceptual.RESNET50_LAYERS[1:]):
      out[name] = getattr(self, name)(out[perceptual.RESNET50_LAYERS[i]])
    return out


def randomize_batch_norm(model, seed=0):
  """Random affine parameters and running statistics, so BN is not the identity."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, tnn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(torch.rand(n, generator=g) + 0.5)
        m.bias.copy_(0.1 * torch.randn(n, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
        m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
  return model


def images(batch, size, seed=0):
  """Images in [-1, 1], NHWC numpy."""
  return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(
      np.float32)


def torch_features(fn, x):
  """The torch reference on NHWC images in [-1, 1], with torchvision's preprocessing."""
  mean = torch.tensor(perceptual.IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(perceptual.IMAGENET_STD).view(1, 3, 1, 1)
  t = torch.from_numpy(x).permute(0, 3, 1, 2)  # [B, 3, H, W]
  with torch.no_grad():
    return fn(((t + 1) / 2 - mean) / std)


def assert_features_close(ours, theirs):
  """theirs: torch [B, C, h, w]; tolerance relative to the features' scale."""
  theirs = theirs.permute(0, 2, 3, 1).numpy()  # [B, h, w, C]
  assert ours.shape == theirs.shape
  scale = float(np.abs(theirs).max())
  assert scale > 0
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-4 * scale)


@pytest.fixture(scope="module")
def vgg_npz(tmp_path_factory):
  """(torch vgg11 in eval mode, path of its converted .npz)."""
  torch.manual_seed(0)
  model = torch_vgg11().eval()
  path = str(tmp_path_factory.mktemp("weights") / "vgg11.npz")
  convert.state_dict_to_npz(model.state_dict(), path)
  return model, path


def test_vgg11_matches_torch_features(vgg_npz):
  torch_model, path = vgg_npz
  model, variables = perceptual.load_perceptual("vgg11", path)
  assert model.layer == "relu4_2"
  x = images(2, 64)
  cut = perceptual.VGG11_LAYERS[model.layer]
  theirs = torch_features(torch_model.features[:cut + 1], x)
  ours = jax.jit(model.apply)(variables, jnp.asarray(x))
  assert ours.shape == (2, 8, 8, 512)
  assert_features_close(ours, theirs)


def test_resnet50_matches_torch_features_at_every_stage_used(tmp_path):
  torch.manual_seed(0)
  torch_model = randomize_batch_norm(TorchResNet50()).eval()
  path = str(tmp_path / "resnet50.npz")
  convert.state_dict_to_npz(torch_model.state_dict(), path)
  x = images(2, 64, seed=1)
  theirs = torch_features(torch_model, x)
  # layer2 is the default cut; layer4 runs every weight in the file.
  for layer, shape in (("layer2", (2, 8, 8, 512)), ("layer4", (2, 2, 2, 2048))):
    model, variables = perceptual.load_perceptual("resnet50", path, layer=layer)
    ours = jax.jit(model.apply)(variables, jnp.asarray(x))
    assert ours.shape == shape
    assert_features_close(ours, theirs[layer])


def test_converter_cli_writes_a_loadable_npz(tmp_path, vgg_npz, capsys):
  torch_model, _ = vgg_npz
  pth, npz = tmp_path / "vgg11.pth", tmp_path / "vgg11.npz"
  torch.save({f"module.{k}": v for k, v in torch_model.state_dict().items()}, pth)
  convert.main(["--arch=vgg11", f"--input={pth}", f"--output={npz}"])
  assert "loads" in capsys.readouterr().out
  with np.load(npz) as f:
    assert "features.0.weight" in f.files and f["features.0.weight"].dtype == np.float32


def test_missing_file_names_path_and_converter(tmp_path):
  path = str(tmp_path / "nowhere" / "vgg11.npz")
  with pytest.raises(perceptual.PerceptualWeightsError) as e:
    perceptual.load_perceptual("vgg11", path)
  assert path in str(e.value) and "experiments.convert_torchvision_weights" in str(e.value)


def test_unknown_network_is_an_error(vgg_npz):
  with pytest.raises(perceptual.PerceptualWeightsError, match="vgg19"):
    perceptual.load_perceptual("vgg19", vgg_npz[1])


def test_bad_keys_and_shapes_are_named(tmp_path, vgg_npz):
  with np.load(vgg_npz[1]) as f:
    arrays = dict(f)
  wrong = dict(arrays, **{"features.3.weight": np.zeros((128, 32, 3, 3), np.float32)})
  np.savez(tmp_path / "wrong.npz", **wrong)
  with pytest.raises(perceptual.PerceptualWeightsError,
                     match=r"features\.3\.weight.*\(128, 32, 3, 3\).*\(128, 64, 3, 3\)"):
    perceptual.load_perceptual("vgg11", str(tmp_path / "wrong.npz"))
  del arrays["features.11.bias"]
  np.savez(tmp_path / "missing.npz", **arrays)
  with pytest.raises(perceptual.PerceptualWeightsError, match=r"features\.11\.bias"):
    perceptual.load_perceptual("vgg11", str(tmp_path / "missing.npz"))


def test_gradients_reach_images_not_weights():
  model, variables = perceptual.init_random("vgg11", jax.random.key(0), image_size=32)
  a, b = jnp.asarray(images(2, 32, seed=2)), jnp.asarray(images(2, 32, seed=3))

  def loss(v, b):  # the Stage2 use: weights passed in, frozen inside
    d = perceptual.perceptual_distance(perceptual.frozen_features(model, v), a, b)  # [B]
    return d.sum(), d

  grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
  (g_weights, g_images), d = grad_fn(variables, b)
  assert d.shape == (2,) and bool(jnp.all(d > 0))
  assert bool(jnp.all(jnp.isfinite(g_images))) and float(jnp.abs(g_images).max()) > 0
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(g_weights))


def test_random_init_file_round_trips_to_the_same_variables(tmp_path, capsys):
  npz = tmp_path / "w" / "vgg11_random.npz"
  convert.main(["--arch=vgg11", "--random_init=3", f"--output={npz}"])
  assert "RANDOM" in capsys.readouterr().out
  _, loaded = perceptual.load_perceptual("vgg11", str(npz))
  _, direct = perceptual.init_random("vgg11", jax.random.key(3))
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(direct)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with np.load(npz) as f:  # PyTorch layout on disk: OIHW
    assert f["features.0.weight"].shape == (64, 3, 3, 3)
