"""The model families, each a module on the training engine (`crvae_jax.train.engine`).

  mnist   the crVAE family on binarized MNIST (likelihood, Table 1): `families.mnist`
  stage1  the 64x64 VAE-GAN / crVAE-GAN: `families.stage1`
  stage2  the super-resolution GAN on a frozen Stage1: `families.stage2`

Every family module has `check(config, num_devices, training=True)`, `train(config,
workdir, ...)`, `sample(config, workdir, ...)` and `MODES` (the --mode values it takes);
its `Family` subclass supplies the engine's hooks. A config names its family in
`config.family`.
"""

import importlib
import os

FAMILIES = ("mnist", "stage1", "stage2")


def get(name: str):
  """The family module `name` (one of FAMILIES)."""
  if name not in FAMILIES:
    from crvae_jax.config_checks import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError(f"config.family={name!r} is invalid: one of {FAMILIES}")
  return importlib.import_module(f"crvae_jax.families.{name}")


def family_of(config) -> str:
  """config.family; for a config.json written before configs named their family, the
  family its sections imply (stage == 2: stage2; dataset mnist: mnist; else stage1)."""
  if config.get("family"):
    return config.family
  if config.get("stage") == 2:
    return "stage2"
  return "mnist" if config.get("dataset") == "mnist" else "stage1"


def model_kwargs(section, module_cls) -> dict:
  """The entries of a config section that are fields of the Flax module `module_cls`
  (`Module(**model_kwargs(config.model, Module))`)."""
  fields = module_cls.__dataclass_fields__
  return {k: v for k, v in section.items() if k in fields}


def saved_config(workdir: str):
  """The config a run in `workdir` was trained with, from its config.json (written by
  the engine when the run started), as an unlocked ConfigDict, for reading the run
  (kernels that cannot run here replaced: `checkpoints.portable_kernels`)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from crvae_jax.train import checkpoints  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"no such workdir: {workdir}")
  saved = checkpoints.read_config_json(workdir)
  if saved is None:
    raise FileNotFoundError(
        f"{os.path.join(os.path.abspath(workdir), 'config.json')} does not exist: not a "
        "workdir trained by experiments.main (--mode=train writes its config there)")
  config = ml_collections.ConfigDict(saved)
  if "model" in config:
    checkpoints.portable_kernels(config, os.path.join(workdir, "config.json"))
  return config
