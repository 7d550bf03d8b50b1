r"""crvae_jax entry point: train, evaluate (importance-sampled NLL) and sample.

  python experiments/main.py --config=experiments/configs/mnist.py:crvae,cpu \
      --workdir=runs/mnist_crvae_cpu --mode=train,evaluate,sample
  python experiments/main.py --config=experiments/configs/rgb.py:emoji_crvaegan,cpu \
      --workdir=runs/emoji_crvaegan_cpu --mode=train,sample

--mode takes one or more of train, evaluate, sample (comma-separated, run in order);
evaluate (the NLL) is for the MNIST configs, the RGB GANs have no likelihood.
Training on a workdir that holds a checkpoint resumes it. Kept short on purpose: the logic
lives in the `crvae_jax` library, importable from a notebook.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crvae_jax import config_checks, distributed, evaluate  # pylint: disable=g-import-not-at-top
from crvae_jax.data import rgb as rgb_data
from crvae_jax.train import gan_loop, loop, parallel, setup

MODES = ("train", "evaluate", "sample")
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. "
                                "experiments/configs/mnist.py:crvae,cpu", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and pictures.")
flags.DEFINE_list("mode", ["train"], f"One or more of {MODES}, run in order.")
flags.DEFINE_string("coordinator_address", None, "Multi-process runs: 'host:port' of "
                    "process 0, the same in every process (see README, Multi-host).")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many processes.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process, 0..N-1.")
flags.DEFINE_bool("distributed_auto", False, "Multi-process runs on a TPU pod slice, Slurm "
                  "or Open MPI: let JAX detect the three settings above.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unknown = [m for m in FLAGS.mode if m not in MODES]
  if unknown:
    raise app.UsageError(f"--mode: unknown {unknown}; choose from {MODES}")
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id, auto=FLAGS.distributed_auto)
  except distributed.DistributedError as e:
    raise app.UsageError(str(e)) from e
  config = FLAGS.config
  if config.dataset != "mnist":
    return run_rgb(config)
  # Impossible values fail here, before data loading and compilation.
  config_checks.check_mnist_config(config, parallel.make_mesh(config.train.num_devices).size)
  data = setup.load_data(config)
  for mode in FLAGS.mode:
    if mode == "train":
      loop.train_and_evaluate(config, FLAGS.workdir, data=data)
    elif mode == "evaluate":
      evaluate.evaluate(config, FLAGS.workdir, data=data)
    else:
      evaluate.sample(config, FLAGS.workdir, data=data)


def run_rgb(config):
  """The 64x64 VAE-GAN / crVAE-GAN configs (experiments/configs/rgb.py)."""
  if "evaluate" in FLAGS.mode:
    raise app.UsageError("--mode=evaluate scores a likelihood: MNIST configs only; the "
                         "RGB GAN configs take train and sample")
  config_checks.check_rgb_config(config, parallel.make_mesh(config.train.num_devices).size)
  source = rgb_data.open_source(config.data)
  for mode in FLAGS.mode:
    if mode == "train":
      gan_loop.train(config, FLAGS.workdir, source=source)
    else:
      gan_loop.sample(config, FLAGS.workdir, source=source)

if __name__ == "__main__":
  app.run(main)
