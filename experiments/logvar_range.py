r"""Range of every log-variance a trained MNIST model emits on the test images.

  python -m experiments.logvar_range    # the Table 1 runner's CPU workdirs

For each row workdir under --root (those with a config.json and a checkpoint) it prints
the min and max over all test images and latent dimensions of the log-variance of
q(z1|x) and, for the 2-layer model, of q(z2|z1) and p(z1|z2) (at z1 = the posterior
mean, z2 = its posterior mean). A range inside `channel_recurrent.LOGVAR_LINEAR` means
`bounded_logvar` was the identity for that model on the test set.
"""

import os

from absl import app, flags, logging
import jax
import numpy as np

from crvae_jax import families, host_memory
from crvae_jax.models import channel_recurrent
from crvae_jax.families import mnist as mnist_family
from experiments import launch, table_protocol

FLAGS = flags.FLAGS
flags.DEFINE_string("root", None, "Folder of row workdirs; default the Table 1 runner's "
                    "../runs/mnist_table_cpu beside the checkout.")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                  "Which checkpoint of each workdir: the best by validation ELBO or the "
                  "latest.")
flags.DEFINE_integer("batch_size", 500, "Test images per encoder call.")
flags.DEFINE_bool("finished_only", True, "Only workdirs whose job.json records a test "
                  "evaluation (finished Table 1 jobs of experiments.mnist_table); False: "
                  "every workdir with a config.json.")


def logvar_ranges(config, workdir: str, data) -> dict:
  """{name: (min, max)} of the model's log-variances over the test images."""
  model, variables, _ = mnist_family.restore_variables(config, workdir, FLAGS.checkpoint)

  @jax.jit
  def logvars(x):  # x [b, 28, 28, 1] -> {name: [b, ...]}
    q1 = model.apply(variables, x, method=model.encode)
    out = {"q(z1|x)": q1.logvar}
    if config.model.variant == "crvae_2layer":
      top = lambda fn, a: model.apply(variables, a, method=lambda m, v: fn(m.top, v))
      q2 = top(lambda t, v: t.posterior(v), q1.mean.reshape(x.shape[0], -1))
      out["q(z2|z1)"] = q2.logvar
      out["p(z1|z2)"] = top(lambda t, v: t.prior_of_z1(v), q2.mean).logvar
    return out

  ranges = {}
  for lo in range(0, len(data.test_binary), FLAGS.batch_size):
    x = data.test_binary[lo:lo + FLAGS.batch_size, ..., None].astype(np.float32)
    for name, a in logvars(x).items():
      a = np.asarray(a)
      old = ranges.get(name, (np.inf, -np.inf))
      ranges[name] = (min(old[0], float(a.min())), max(old[1], float(a.max())))
  return ranges


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  lo, hi = channel_recurrent.LOGVAR_LINEAR
  root = FLAGS.root or table_protocol.beside_checkout("mnist_table_cpu")
  if not os.path.isdir(root):
    raise app.UsageError(f"--root={root}: no such folder of row workdirs")
  rows = [r for r in sorted(os.listdir(root))
          if os.path.exists(os.path.join(root, r, "config.json")) and not (
              FLAGS.finished_only and not table_protocol.read_job(
                  os.path.join(root, r))["evals"])]
  if not rows:
    raise app.UsageError(
        f"--root={root} holds no workdir with a config.json"
        + (" and a test evaluation in its job.json (--nofinished_only takes every "
           "trained one)" if FLAGS.finished_only else ""))
  print(f"bounded_logvar is the identity on [{lo:g}, {hi:g}]")
  data = None
  for row in rows:
    workdir = os.path.join(root, row)
    config = families.saved_config(workdir)  # the run's own config.json
    data = data or mnist_family.load_data(config)
    for name, (a, b) in logvar_ranges(config, workdir, data).items():
      inside = "inside" if lo <= a and b <= hi else "OUTSIDE"
      print(f"{row:22s} {name:9s} min {a:8.3f} max {b:8.3f}  {inside}", flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  launch.run(main, more_errors=(table_protocol.RecordError,))
