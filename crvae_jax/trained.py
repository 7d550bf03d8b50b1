"""A trained workdir in a notebook: `crvae_jax.restore(workdir)`.

    import crvae_jax
    run = crvae_jax.restore("runs/mnist_crvae_cpu")         # config from its config.json
    x = run.sample(16, seed=0)                              # [16, 28, 28] in [0, 1]
    z = run.encode(images)                                  # posterior means
    x_rec = run.reconstruct(images)                         # from the posterior mean
    nll = run.nll(test_binary, num_samples=1000)            # [N] nats (MNIST)

Images are what the family trains on: MNIST [N, 28, 28] binary {0, 1} (uint8 or float);
Stage1 [N, 64, 64, 3] in [-1, 1]. Samples and reconstructions come back as numpy:
MNIST Bernoulli means [N, 28, 28], Stage1 images [N, 64, 64, 3] in [-1, 1]. Stage2 runs
are restored through their Stage1 (sample / reconstruct return the high-resolution
images, encode Stage1's posterior means). BatchNorm runs with its running averages. The
checkpoint is 'best' (validation ELBO) for MNIST runs, else the latest.

Start-up on CPU is faster with transparent huge pages for XLA's buffers: start the
notebook's kernel with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (`crvae_jax.host_memory`).
"""

from typing import Optional

import jax
import numpy as np

from crvae_jax import compiled, families, likelihood, sampling, sharding
from crvae_jax.families import mnist, stage1, stage2
from crvae_jax.train import engine, stage2_step


class TrainedModel:
  """A restored model of one family: `family`, `config`, `step`, `model`, `variables`."""

  def __init__(self, family: str, config, model, variables, step: int, refiner=None):
    self.family, self.config, self.model = family, config, model
    self.variables, self.step = variables, step
    self._refiner = refiner  # Stage2: (generator, its variables)
    if refiner is not None:
      self._refine = jax.jit(refiner[0].apply)
    m = model
    self._encode = compiled.jit(lambda v, x: m.apply(v, x, method=m.encode).mean, model=m)
    self._decode = compiled.jit(lambda v, z: m.apply(v, z, method=m.decode), model=m)

  def __repr__(self):
    return (f"TrainedModel({self.family}, {self.config.model.get('variant', '')}, "
            f"step {self.step})")

  def _inputs(self, images) -> jax.Array:
    x = np.asarray(images, np.float32)
    if self.family == "mnist":
      return x[..., None] if x.ndim == 3 else x  # [N, 28, 28, 1]
    if self.family == "stage2":
      return stage2_step.to_stage1_input(x)  # high resolution -> Stage1's 64x64
    return x

  def _outputs(self, decoded) -> np.ndarray:
    if self.family == "mnist":
      return np.asarray(jax.nn.sigmoid(decoded))[..., 0]  # Bernoulli means
    if self.family == "stage2":
      return np.asarray(self._refine(self._refiner[1], decoded))
    return np.asarray(decoded)

  def encode(self, images) -> np.ndarray:
    """Posterior means of q(z | x) for `images` ([N, ...] as the family trains on)."""
    return np.asarray(self._encode(self.variables, self._inputs(images)))

  def reconstruct(self, images) -> np.ndarray:
    """Decoded posterior means: MNIST Bernoulli means [N, 28, 28], RGB images."""
    return self._outputs(self._decode(self.variables, self.encode(images)))

  def sample(self, n: int, seed: int = 0) -> np.ndarray:
    """`n` prior samples (MNIST: Bernoulli means [n, 28, 28]; RGB: images in [-1, 1])."""
    if self.family == "mnist":
      return sampling.prior_sample_means(self.model, self.variables, n, seed)
    eps = jax.random.normal(jax.random.key(seed), (n,) + self.model.latent_shape)
    return self._outputs(self._decode(self.variables, eps))

  def nll(self, images, num_samples: int = 1000, *, chunk_size: int = 128,
          batch_size: int = 16, seed: int = 0) -> np.ndarray:
    """Importance-sampled -log p(x) in nats, per image [N], of binary MNIST images
    [N, 28, 28] (K = num_samples; `crvae_jax.likelihood`). MNIST runs only."""
    if self.family != "mnist":
      raise ValueError(f"nll: a likelihood needs an MNIST run, this is a {self.family} run "
                       "(the GANs have none)")
    mesh = sharding.make_mesh()
    result = likelihood.estimate_log_likelihood(
        self.model, self.variables, np.asarray(images), mesh, num_samples=num_samples,
        chunk_size=chunk_size, batch_size=batch_size, report_k=num_samples, seed=seed,
        progress=False)
    return -result.log_px


def restore(workdir: str, checkpoint: Optional[str] = None) -> TrainedModel:
  """The trained model in `workdir` (its config from <workdir>/config.json), on one
  device. checkpoint: 'best' or 'latest' (default: MNIST 'best', GANs 'latest')."""
  config = families.saved_config(workdir)
  family = families.family_of(config)
  config.train.num_devices = 1  # restore on one device, whatever the run trained on
  mesh = sharding.make_mesh(1)
  if family == "mnist":
    which = checkpoint or "best"
    fam = mnist.Family(config, mesh=mesh, num_train=1)  # the schedule is not restored
    state, step = engine.restore_trained(fam, workdir, which)
    model = fam.model.clone(bn_axis_name=None)
    return TrainedModel(family, config, model, mnist.state_variables(state), step)
  if checkpoint not in (None, "latest"):
    raise ValueError(f"checkpoint={checkpoint!r}: a {family} run keeps only its latest "
                     "checkpoints (no best by a validation metric); use 'latest' or None")
  if family == "stage1":
    parts, state, step = stage1.restore(config, workdir)
    return TrainedModel(family, config, parts.model, stage1.generator_variables(state),
                        step)
  fam = stage2.Family(config, mesh=mesh)
  state, step = engine.restore_trained(fam, workdir)
  stage1_model, stage1_vars, _ = stage2.restore_stage1(config, workdir)
  gen = stage2.build(config, axis_name=None).gen
  return TrainedModel(family, config, stage1_model, stage1_vars, step,
                      refiner=(gen, state.gen))
