r"""crvae_jax entry point: train, evaluate (importance-sampled NLL) and sample.

  python -m experiments.main --config=experiments/configs/mnist.py:crvae,cpu \
      --workdir=runs/mnist_crvae_cpu --mode=train,evaluate,sample
  python -m experiments.main --config=experiments/configs/rgb.py:emoji_crvaegan,cpu \
      --workdir=runs/emoji_crvaegan_cpu --mode=train,sample
  python -m experiments.main --config=experiments/configs/stage2.py:emoji_crvaegan,cpu \
      --workdir=runs/emoji_crvaegan_stage2_cpu --mode=train,sample

(`crvae ...` is the same command once the package is installed: pip install -e .)
The config's `family` (mnist, stage1, stage2; `crvae_jax.families`) says which model
family runs. --mode takes one or more of train, evaluate, sample, complete
(comma-separated, run in order); evaluate (the NLL) is for the MNIST configs, the RGB
GANs have no likelihood. complete (Stage1 configs) fills in masked images with
--workdir's latest checkpoint and writes grids and PSNR/SSIM to <workdir>/completion/;
--compare_workdir adds a second trained Stage1 run (e.g. the crVAE-GAN next to a
VAE-GAN), rebuilt from the config.json its training wrote, completed on the same images
and masks:
  python -m experiments.main --config=experiments/configs/rgb.py:emoji_vaegan,cpu \
      --workdir=runs/emoji_vaegan_cpu --compare_workdir=runs/emoji_crvaegan_cpu \
      --mode=complete
Training on a workdir that holds a checkpoint resumes it; the other modes need a trained
workdir. Kept short on purpose: the logic lives in the `crvae_jax` library, importable
from a notebook (`crvae_jax.restore(workdir)`).
"""

import os

from absl import app, flags
from ml_collections import config_flags

from crvae_jax import host_memory
from experiments import launch

MODES = ("train", "evaluate", "sample", "complete")
WHY_NOT = {  # (family, mode): why that family has no such mode
    ("stage1", "evaluate"): "--mode=evaluate scores a likelihood: MNIST configs only; the "
                            "RGB GAN configs take train, sample and complete",
    ("stage2", "evaluate"): "Stage2 configs take --mode=train and/or sample",
    ("stage2", "complete"): "Stage2 configs take --mode=train and/or sample",
    ("mnist", "complete"): "--mode=complete fills in masked 64x64 RGB images: RGB Stage1 "
                           "configs (experiments/configs/rgb.py) only",
}
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
flags.DEFINE_bool("distributed_auto", False, "Multi-process runs on a TPU pod slice, "
                  "Slurm or Open MPI: let JAX detect the three settings above.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  # pylint: disable=g-import-not-at-top  (JAX loads after the huge-page restart)
  from crvae_jax import completion, distributed, families, sharding
  from crvae_jax.data import rgb as rgb_data
  from crvae_jax.models import layers
  from crvae_jax.train import checkpoints, workdir_lock
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
  launch.configure_logging()
  launch.enable_compilation_cache(FLAGS.compilation_cache_dir)
  config, workdir = FLAGS.config, FLAGS.workdir
  if not workdir.strip():
    raise FileNotFoundError("--workdir is empty (an unset variable?)")
  full = existing = os.path.abspath(workdir)  # existing: the nearest entry at or above it
  while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    what = "a broken symlink" if os.path.islink(existing) else "a file"
    raise NotADirectoryError(
        f"--workdir={workdir} is {what}, not a directory" if existing == full else
        f"--workdir={workdir}: {existing} is {what}")
  name = config.get("family")  # ConfigError below if missing
  family = families.get(name)
  for mode in FLAGS.mode:
    if mode not in family.MODES:
      raise app.UsageError(WHY_NOT.get((name, mode), f"{name} configs take --mode in "
                                                     f"{family.MODES}"))
  compare = None
  if "complete" in FLAGS.mode:
    completion.check_completion_config(config)
    if FLAGS.compare_workdir:
      try:
        compare = (completion.compare_config(FLAGS.compare_workdir), FLAGS.compare_workdir)
      except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(f"--compare_workdir: {e}") from e
  elif FLAGS.compare_workdir:
    raise app.UsageError("--compare_workdir is read by --mode=complete only")
  # The kernels (model.conv_impl, fused_backward): a workdir's own, else 'fastest'
  # resolved here; before the checks and before any mode builds a model.
  if "model" in config:
    checkpoints.settle_kernels(workdir, config, training="train" in FLAGS.mode)
  # Impossible values fail here, before data loading and compilation.
  family.check(config, sharding.make_mesh(config.train.num_devices).size,
               training="train" in FLAGS.mode)
  if FLAGS.mode[0] != "train" and not os.path.isdir(workdir):
    raise FileNotFoundError(f"no such workdir: {workdir}")
  if "conv_impl" in config.model:
    kernels = layers.kernels_label(config.model.conv_impl,
                                   config.model.get("fused_backward", False))
    distributed.info(f"kernels: {kernels}; {host_memory.description()}")
  if "train" in FLAGS.mode:  # (training checks it again, for library callers)
    checkpoints.refuse_other_config(workdir, config)
  data = {}  # loaded once for every mode that reads it
  if name == "mnist":
    data["data"] = family.load_data(config)
  elif any(m in ("train", "sample") for m in FLAGS.mode):
    data["source"] = rgb_data.open_source(config.data)
  # One lock over every mode: an evaluation is refused at once while another run holds
  # the workdir, not after hours of scoring when it writes its files.
  with workdir_lock.hold(workdir):
    for mode in FLAGS.mode:
      if mode == "complete":  # reads completion.tfds_split, a held-out split
        completion.complete(config, workdir, compare=compare,
                            out_dir=os.path.join(workdir, "completion"))
      else:
        getattr(family, mode)(config, workdir, **data)


def run():
  """The console script `crvae` (pyproject.toml) and `python -m experiments.main`."""
  host_memory.reexec_with_hugepages()  # before JAX loads; see crvae_jax.host_memory
  launch.run(main)


if __name__ == "__main__":
  run()
