r"""crvae_jax entry point: train, evaluate (importance-sampled NLL) and sample.

  python experiments/main.py --config=experiments/configs/mnist.py:crvae,cpu \
      --workdir=runs/mnist_crvae_cpu --mode=train,evaluate,sample
  python experiments/main.py --config=experiments/configs/rgb.py:emoji_crvaegan,cpu \
      --workdir=runs/emoji_crvaegan_cpu --mode=train,sample
  python experiments/main.py --config=experiments/configs/stage2.py:emoji_crvaegan,cpu \
      --workdir=runs/emoji_crvaegan_stage2_cpu --mode=train,sample

--mode takes one or more of train, evaluate, sample, complete (comma-separated, run in
order); evaluate (the NLL) is for the MNIST configs, the RGB GANs have no likelihood.
complete (RGB Stage1 configs) fills in masked images with --workdir's latest checkpoint
and writes grids and PSNR/SSIM to <workdir>/completion/; --compare_workdir adds a second
trained Stage1 run (e.g. the crVAE-GAN next to a VAE-GAN), rebuilt from the config.json
its training wrote, completed on the same images and masks:
  python experiments/main.py --config=experiments/configs/rgb.py:emoji_vaegan,cpu \
      --workdir=runs/emoji_vaegan_cpu --compare_workdir=runs/emoji_crvaegan_cpu \
      --mode=complete
Training on a workdir that holds a checkpoint resumes it. Kept short on purpose: the logic
lives in the `crvae_jax` library, importable from a notebook.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crvae_jax import host_memory  # pylint: disable=g-import-not-at-top

if __name__ == "__main__":
  host_memory.reexec_with_hugepages()  # before the heavy imports; see host_memory

from crvae_jax import completion  # pylint: disable=g-import-not-at-top
from crvae_jax import config_checks, distributed, evaluate  # pylint: disable=g-import-not-at-top
from crvae_jax.data import rgb as rgb_data
from crvae_jax.train import gan_loop, loop, parallel, setup, stage2_loop

MODES = ("train", "evaluate", "sample", "complete")
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. "
                                "experiments/configs/mnist.py:crvae,cpu", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and pictures.")
flags.DEFINE_list("mode", ["train"], f"One or more of {MODES}, run in order.")
flags.DEFINE_string("compare_workdir", None, "--mode=complete: a second trained Stage1 "
                    "workdir (its config.json is read) completed next to --workdir's.")
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
  if config.get("stage") == 2:
    return run_stage2(config)
  if config.dataset != "mnist":
    return run_rgb(config)
  if "complete" in FLAGS.mode:
    raise app.UsageError("--mode=complete fills in masked 64x64 RGB images: RGB Stage1 "
                         "configs (experiments/configs/rgb.py) only")
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
                         "RGB GAN configs take train, sample and complete")
  config_checks.check_rgb_config(config, parallel.make_mesh(config.train.num_devices).size)
  compare = None
  if "complete" in FLAGS.mode:
    completion.check_completion_config(config)
    if FLAGS.compare_workdir:
      try:
        compare = (completion.saved_config(FLAGS.compare_workdir, like=config),
                   FLAGS.compare_workdir)
      except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(f"--compare_workdir: {e}") from e
  elif FLAGS.compare_workdir:
    raise app.UsageError("--compare_workdir is read by --mode=complete only")
  needs_source = any(m in ("train", "sample") for m in FLAGS.mode)
  source = rgb_data.open_source(config.data) if needs_source else None
  for mode in FLAGS.mode:
    if mode == "train":
      gan_loop.train(config, FLAGS.workdir, source=source)
    elif mode == "complete":  # reads completion.tfds_split, a held-out split
      completion.complete(config, FLAGS.workdir, compare=compare,
                          out_dir=os.path.join(FLAGS.workdir, "completion"))
    else:
      gan_loop.sample(config, FLAGS.workdir, source=source)


def run_stage2(config):
  """The Stage2 super-resolution configs (experiments/configs/stage2.py)."""
  if any(m not in ("train", "sample") for m in FLAGS.mode):
    raise app.UsageError("Stage2 configs take --mode=train and/or sample")
  config_checks.check_stage2_config(config, parallel.make_mesh(config.train.num_devices).size,
                                    training="train" in FLAGS.mode)
  source = rgb_data.open_source(config.data)
  for mode in FLAGS.mode:
    (stage2_loop.train if mode == "train" else stage2_loop.sample)(
        config, FLAGS.workdir, source=source)


if __name__ == "__main__":
  app.run(main)
