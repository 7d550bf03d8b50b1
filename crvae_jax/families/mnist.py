"""The MNIST crVAE family: data, model, optimizer, state, and its hooks on the engine.

`train_and_evaluate(config, workdir)` trains (or resumes) one config of
experiments/configs/mnist.py in a workdir: steps of `train.mnist_step`, the true
validation ELBO and a checkpoint every `train.eval_every_epochs` (best/ keeps the best
ELBO), prior samples every `train.sample_every_epochs`. `evaluate` scores a trained
workdir's test NLL (importance sampling), `sample` draws its final pictures.
"""

import json
import os
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from crvae_jax import ais
from crvae_jax import config_checks, data as mnist_data, distributed, likelihood, sampling
from crvae_jax import sharding, stats
from crvae_jax.families import model_kwargs
from crvae_jax.models.mnist import MnistVAE
from crvae_jax.train import checkpoints, engine, mnist_step, optimizer, workdir_lock

MODES = ("train", "evaluate", "sample")


class MnistData(NamedTuple):
  train_images: np.ndarray  # [N, 28, 28] uint8 intensities (binarized per batch)
  valid_binary: np.ndarray  # [10000, 28, 28] uint8 {0, 1}
  test_binary: np.ndarray  # [10000, 28, 28] uint8 {0, 1}
  test_images: np.ndarray  # [10000, 28, 28] uint8 intensities (for pictures)
  test_set: str  # which binarized test set, in words


def load_data(config) -> MnistData:
  """MNIST splits and the statically binarized validation/test sets (config.data)."""
  d = config.data
  files = mnist_data.locate_mnist_files(
      d.mnist_dir or None, d.cache_dir or None, allow_download=d.allow_download)
  return from_splits(mnist_data.load_mnist(files, num_valid=d.num_valid), config)


def from_splits(splits, config) -> MnistData:
  d = config.data
  valid, test, description = mnist_data.load_eval_sets(
      splits, test_set=d.test_set, larochelle_dir=d.larochelle_dir or None)
  return MnistData(splits.train.images, valid, test, splits.test.images, description)


def check(config, num_devices: int, training: bool = True) -> None:
  del training  # every check applies to evaluation too
  config_checks.check_mnist_config(config, num_devices)


def build_model(config) -> MnistVAE:
  """`MnistVAE(**config.model)`, BatchNorm statistics averaged over the mesh."""
  return MnistVAE(**model_kwargs(config.model, MnistVAE), bn_axis_name=sharding.BATCH_AXIS)


def steps_per_epoch(config, num_train: int) -> int:
  return max(1, num_train // config.train.batch_size)


def build_optimizer(config, num_train: int):
  o = config.optim
  return optimizer.make_optimizer(
      learning_rate=o.learning_rate, lstm_lr_divisor=o.lstm_lr_divisor,
      lstm_grad_clip=o.lstm_grad_clip,
      halve_every_steps=int(round(o.halve_every_epochs * steps_per_epoch(config,
                                                                         num_train))),
      b1=o.b1, b2=o.b2, eps=o.eps)


def init_variables(model: MnistVAE, seed: int):
  """Parameters and BN statistics, initialised under jit (fast; no eager tracing)."""
  x = jnp.zeros((1, 28, 28, 1))
  eps1 = jnp.zeros((1, 1) + model.latent_shape)
  eps2 = jnp.zeros((1, 1, model.top_dim))
  return jax.jit(model.init)(jax.random.key(seed), x, eps1, eps2)


def init_state(model: MnistVAE, tx, seed: int) -> mnist_step.TrainState:
  variables = init_variables(model, seed)
  params = variables["params"]
  return mnist_step.TrainState(jnp.int32(0), params, variables["batch_stats"],
                               jax.jit(tx.init)(params))


def state_variables(state) -> dict:
  """The model's {'params', 'batch_stats'} (what evaluation and sampling need)."""
  return {"params": state.params, "batch_stats": state.batch_stats}


class Family(engine.Family):
  """MNIST on the engine. `data` (an `MnistData`) is loaded from config.data when not
  given, at first use (after the engine's config check). `num_train` stands in for the
  training-set size where no data is needed (restoring a checkpoint: it only sets the
  learning-rate schedule, not the state's shapes)."""

  keeps_best, best_metric = True, "elbo"

  def __init__(self, config, *, data: Optional[MnistData] = None, mesh=None,
               num_train: Optional[int] = None):
    super().__init__(config, mesh)
    self._data, self._num_train = data, num_train
    self.model = build_model(config)
    self._elbo_fn = None

  check = staticmethod(check)

  @property
  def data(self) -> MnistData:
    if self._data is None:
      self._data = load_data(self.config)
    return self._data

  @property
  def num_train(self) -> int:
    return self._num_train or len(self.data.train_images)

  def tx(self):
    return build_optimizer(self.config, self.num_train)

  def init_state(self, abstract: bool = False):
    init = lambda: init_state(self.model, self.tx(), self.config.train.seed)
    return jax.eval_shape(init) if abstract else init()

  def schedule(self) -> engine.Schedule:
    t, per_epoch = self.config.train, steps_per_epoch(self.config, self.num_train)
    every = lambda epochs: max(1, int(round(epochs * per_epoch)))
    return engine.Schedule(total_steps=int(round(t.num_epochs * per_epoch)),
                           log_every=t.log_every_steps,
                           checkpoint_every=every(t.eval_every_epochs),
                           sample_every=every(t.sample_every_epochs),
                           steps_per_epoch=per_epoch)

  def batches(self, start: int):
    t = self.config.train
    order = mnist_data.TrainOrder(num_examples=self.num_train, batch_size=t.batch_size,
                                  seed=t.seed)
    rows = sharding.process_rows(self.mesh, t.batch_size)
    for step in range(start, self.schedule().total_steps):
      yield self.data.train_images[np.asarray(order.indices(step))[rows]]

  def make_step(self):
    c = self.config
    step = mnist_step.make_train_step(
        self.model, self.tx(), mnist_step.make_objective(c.objective, c.model.num_blocks),
        self.mesh, num_samples=c.objective.num_samples)
    rng = jax.random.key(c.train.seed)
    return lambda state, batch: step(state, batch, rng)

  def describe(self, state) -> str:
    m = self.config.model
    return (f"{m.variant} (T={m.num_blocks}, width={m.width}, lstm={m.lstm_hidden}): "
            f"{engine.num_params(state.params):,} parameters; "
            f"{steps_per_epoch(self.config, self.num_train)} steps/epoch")

  def progress(self, summary: dict, num_steps: int) -> dict:
    del num_steps
    return dict(loss=f"{summary['loss']:.2f}", elbo=f"{summary['bound']:.2f}",
                ex_s=f"{summary['examples_per_s']:.0f}")

  def validate(self, state) -> dict:
    """True ELBO (beta = 1, one sample, BN in inference mode) on the validation split."""
    if self._elbo_fn is None:
      self._elbo_fn = mnist_step.make_elbo_eval(self.model, self.mesh)
    c = self.config
    elbo = mnist_step.evaluate_elbo(self._elbo_fn, state_variables(state),
                                    self.data.valid_binary, self.mesh,
                                    batch_size=c.eval.batch_size * 5, seed=c.eval.seed)
    return {"elbo": float(elbo.mean())}

  def draw(self, state, workdir: str, tag: str) -> None:
    sampling.write_prior_samples(self.model, state_variables(state), self.config,
                                 os.path.join(workdir, "samples", f"prior_{tag}.png"))


def train_and_evaluate(config, workdir: str, *, data: Optional[MnistData] = None) -> dict:
  """Train (or resume) the MNIST model of `config` in `workdir`; returns the last
  validation metrics with skipped_steps and train_seconds (train_summary.json).

  Writes metrics.jsonl, TensorBoard events, checkpoints/ (latest), best/ (best
  validation ELBO), config.json and sample PNGs.
  """
  return engine.train(Family(config, data=data), workdir)


train = train_and_evaluate


# Per-image arrays `evaluate` saves: K=N NLL, K=report_k NLL, -ELBO, the K=1 term.
PER_IMAGE_NAMES = ("nll", "nll_report", "neg_elbo", "nll_k1")


def restore_variables(config, workdir: str, which: str = "latest", *, mesh=None):
  """(model, {'params', 'batch_stats'}, step) from the workdir's `which` checkpoint
  ('latest' or 'best'), replicated over the mesh; no data is loaded."""
  family = Family(config, mesh=mesh, num_train=1)  # the schedule is not restored
  family.check(config, family.mesh.size)
  state, step = engine.restore_trained(family, workdir, which, replicated=True)
  return family.model, state_variables(state), step


def per_image_path(workdir: str, num_samples, name: str = "nll") -> str:
  """Where `evaluate` saves one per-image array (name in PER_IMAGE_NAMES). num_samples:
  K of importance sampling (eval_test_K<K>_<name>.npy), or an estimator's tag string
  such as AIS's 'AIS<T>x<C>-<init>' (eval_test_<tag>_<name>.npy; `ais.Settings.tag`)."""
  if name not in PER_IMAGE_NAMES:
    raise ValueError(f"per-image name must be one of {PER_IMAGE_NAMES}, got {name!r}")
  tag = num_samples if isinstance(num_samples, str) else f"K{num_samples}"
  return os.path.join(workdir, f"eval_test_{tag}_{name}.npy")


def resume_path(workdir: str, num_samples: int, checkpoint: str, num_images: int) -> str:
  """Where a single-process IS evaluation keeps its finished images until it is done
  (one file per K, checkpoint and number of test images; what else the numbers depend
  on is checked by `likelihood.estimate_log_likelihood`)."""
  # not eval_test_*: nothing that collects finished evaluations may take it for one
  return os.path.join(workdir, f"eval_partial_K{num_samples}_{checkpoint}_{num_images}img.npz")


def evaluate(config, workdir: str, *, data: Optional[MnistData] = None,
             deadline: Optional[float] = None) -> dict:
  """Test NLL (config.eval): importance sampling, or AIS with eval.estimator='ais'
  (crvae_jax.ais); writes eval_test_<tag>.json and the per-image values (nats, [N]
  float64, test-set order) eval_test_<tag>_<name>.npy into the workdir, tag K<K> or
  AIS<T>x<C>-<init>, name in PER_IMAGE_NAMES, for paired comparisons between models.

  In a multi-process run the test images are split over every process's devices, every
  process returns the same summary, and process 0 writes the files. A single-process IS
  evaluation saves its finished images as it goes (`resume_path`), so one that is killed
  or passes `deadline` (a time.monotonic() time; `likelihood.EvaluationPaused` is then
  raised) resumes where it stopped when run again with the same checkpoint and settings.
  """
  e = config.eval
  model, variables, step = restore_variables(config, workdir, e.checkpoint)
  data = data or load_data(config)
  mesh = sharding.make_mesh(config.train.num_devices)
  how = (f"AIS ({e.ais.num_steps} distributions x {e.ais.num_chains} chains, from the "
         f"{e.ais.init})" if e.get("estimator", "is") == "ais"
         else f"K={e.num_samples} importance samples")
  distributed.info(f"Scoring {len(data.test_binary)} test images with {how} "
                   f"({e.checkpoint} checkpoint, step {step}); test set: {data.test_set}")
  resume = None  # IS only: the finished images of an interrupted run
  if e.get("estimator", "is") == "ais":  # annealed importance sampling: crvae_jax.ais
    if deadline is not None:
      raise ValueError("an evaluation deadline is for IS (eval.estimator='is'), not AIS")
    result = ais.estimate_from_config(model, variables, data.test_binary, mesh, e,
                                      progress=distributed.is_main())
    tag = result.settings.tag
  else:
    resume = (resume_path(workdir, e.num_samples, e.checkpoint, len(data.test_binary))
              if jax.process_count() == 1 else None)
    if deadline is not None and resume is None:
      raise ValueError("an evaluation deadline needs a single-process run")
    result = likelihood.estimate_log_likelihood(
        model, variables, data.test_binary, mesh, num_samples=e.num_samples,
        chunk_size=e.chunk_size, batch_size=e.batch_size, report_k=e.report_k,
        seed=e.seed, progress=distributed.is_main(), resume_file=resume,
        deadline=deadline)
    tag = f"K{e.num_samples}"
  summary = {"checkpoint": e.checkpoint, "step": int(step), "test_set": data.test_set,
             "num_images": int(len(data.test_binary)), "num_samples": e.num_samples,
             "seed": e.seed, "scale": config.get("scale", "?"),
             "variant": config.model.variant, "num_blocks": config.model.num_blocks,
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "devices": f"{len(mesh.devices.flat)} x {mesh.devices.flat[0].device_kind}",
             "processes": jax.process_count(),
             "jax": jax.__version__}
  if e.get("estimator", "is") == "ais":  # C chains in the place of K samples
    summary.update(ais.summary_fields(result), num_samples=result.num_samples)
  else:  # images whose estimates an interrupted earlier run had saved
    summary["resumed_images"] = int(result.resumed)
  for name, values in (("nll", -result.log_px), (f"nll_k{result.report_k}",
                                                  -result.log_px_report),
                       ("neg_elbo", -result.elbo)):
    mean, stderr = stats.mean_and_stderr(values)
    summary[name], summary[name + "_stderr"] = mean, stderr
  per_image = {"nll": -result.log_px, "nll_report": -result.log_px_report,
               "neg_elbo": -result.elbo, "nll_k1": -result.log_px_k1}
  assert set(per_image) == set(PER_IMAGE_NAMES)
  distributed.info(
      f"test NLL ({tag}): {summary['nll']:.2f} +- {summary['nll_stderr']:.2f}"
      f" nats | K={result.report_k}: {summary[f'nll_k{result.report_k}']:.2f} | "
      f"-ELBO: {summary['neg_elbo']:.2f} | {data.test_set}")
  if not distributed.is_main():
    return summary
  with workdir_lock.hold(workdir):
    checkpoints.write_file_atomic(os.path.join(workdir, f"eval_test_{tag}.json"),
                                  json.dumps(summary, indent=2))
    for name, values in per_image.items():
      np.save(per_image_path(workdir, tag, name), np.asarray(values, np.float64))
    if resume is not None:
      likelihood.remove_resume_file(resume)
  return summary


def sample(config, workdir: str, *, data: Optional[MnistData] = None) -> list:
  """Writes samples/prior_final.png and samples/reconstructions.png into the workdir."""
  model, variables, step = restore_variables(config, workdir, config.eval.checkpoint)
  data = data or load_data(config)
  out = os.path.join(workdir, "samples")
  with workdir_lock.hold(workdir):
    paths = [
        sampling.write_prior_samples(model, variables, config,
                                     os.path.join(out, "prior_final.png")),
        sampling.write_reconstructions(model, variables, data.test_binary[:50],
                                       os.path.join(out, "reconstructions.png")),
    ]
  distributed.info(f"wrote {', '.join(paths)} (step {step})")
  return paths
