"""Every numeric config key of every family, set to zero, a negative number or (integer
keys) a fraction, is refused before anything is built, by an error naming the key --
unless this file lists that value as legal for the key, with the reason."""

import ml_collections
import pytest

from crvae_jax import completion, config_checks
from experiments.configs import mnist, rgb, stage2

# key -> why zero is a legal value.
ZERO_IS_LEGAL = {
    "train.seed": "seeds are any integer >= 0",
    "eval.seed": "seeds are any integer >= 0",
    "sample.seed": "seeds are any integer >= 0",
    "completion.seed": "seeds are any integer >= 0",
    "objective.beta": "a loss weight: 0 switches the term off",
    "objective.beta_first_blocks": "a loss weight: 0 switches the term off",
    "objective.alpha1": "a loss weight: 0 switches the term off",
    "objective.alpha2": "a loss weight: 0 switches the term off",
    "objective.kappa": "a loss weight: 0 switches the term off (the VAE-GAN uses 0)",
    "objective.gamma": "a loss weight: 0 trains Stage2 without the perceptual term",
    "completion.gamma": "a loss weight: 0 completes without the adversarial term",
    "completion.tau": "a loss weight: 0 completes without the prior term",
    "optim.b1": "Adam's decay rates lie in [0, 1)",
    "optim.b2": "Adam's decay rates lie in [0, 1)",
    "optim.halve_every_epochs": "0: constant learning rates",
    "optim.halve_every_steps": "0: constant learning rates",
    "train.keep_checkpoint_every_steps": "0: keep the last two checkpoints only",
    "model.num_res_blocks": "Stage2 without residual blocks is a valid, smaller model",
    "objective.max_d_accuracy": "below 0 the discriminator never updates (an ablation)",
    "paper_nll": "not a setting: the paper's figure, printed next to ours",
}
# key -> why a negative value is legal.
NEGATIVE_IS_LEGAL = {
    "objective.max_d_accuracy": "below 0 the discriminator never updates (an ablation)",
    "paper_nll": "not a setting: the paper's figure, printed next to ours",
}


def _stage2_check(c):
  config_checks.check_stage2_config(c, 1, training=False)  # no perceptual weights file


def _completion_check(c):
  config_checks.check_rgb_config(c, 1)  # what --mode=complete runs, in this order
  completion.check_completion_config(c)


# family -> (config arguments, get_config, check, which keys belong to the family)
FAMILIES = {
    "mnist": ([f"{row},cpu" for row in mnist.ROWS] + ["crvae"], mnist.get_config,
              lambda c: config_checks.check_mnist_config(c, 1), lambda k: True),
    "stage1": ([f"{row},cpu" for row in rgb.ROWS] + ["celeba_crvaegan"], rgb.get_config,
               lambda c: config_checks.check_rgb_config(c, 1),
               lambda k: not k.startswith("completion.")),
    "stage2": ([f"{row},cpu" for row in stage2.ROWS] + ["celeba_crvaegan"],
               stage2.get_config, _stage2_check, lambda k: True),
    "completion": ([f"{row},cpu" for row in rgb.ROWS], rgb.get_config, _completion_check,
                   lambda k: k.startswith("completion.")),
}


def numeric_keys(config, prefix=""):
  """('train.seed', int), ... for every int/float field (placeholders included)."""
  for name in sorted(config.keys()):
    value = config[name]
    if isinstance(value, ml_collections.ConfigDict):
      yield from numeric_keys(value, f"{prefix}{name}.")
    elif config.get_type(name) in (int, float) and not isinstance(value, bool):
      yield f"{prefix}{name}", config.get_type(name)


def _set(config, key, value):
  *path, last = key.split(".")
  for part in path:
    config = config[part]
  config[last] = value


def _bad_values(key, kind):
  values = [] if key in ZERO_IS_LEGAL else [kind(0)]
  values += [] if key in NEGATIVE_IS_LEGAL else [kind(-1)]
  return values


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_numeric_key_refuses_zero_negative_and_fractional_values(family):
  args, get_config, check, belongs = FAMILIES[family]
  seen, unrefused = set(), []
  for arg in args:
    check(get_config(arg))  # the shipped values pass
    for key, kind in numeric_keys(get_config(arg)):
      if not belongs(key):
        continue
      seen.add(key)
      for value in _bad_values(key, kind):
        config = get_config(arg)
        if key.startswith("eval.ais."):
          config.eval.estimator = "ais"  # checked when the AIS estimator is chosen
        _set(config, key, value)
        try:
          check(config)
          unrefused.append(f"{arg}: {key}={value} accepted")
        except config_checks.ConfigError as e:
          if f"config.{key}={value!r}" not in str(e):
            unrefused.append(f"{arg}: {key}={value}: the error names another key: {e}")
      if kind is int:  # a fraction: ml_collections refuses it, naming the field
        with pytest.raises(TypeError, match=f"field '{key.split('.')[-1]}'.*cannot be "
                           "casted to type <class 'int'>"):
          _set(get_config(arg), key, 2.5)
  assert not unrefused, "\n".join(unrefused)
  assert len(seen) >= 7, seen  # completion has 7 numeric keys, the others 20 or more


def test_every_listed_exception_is_a_key_of_some_family():
  keys = set()
  for args, get_config, _, _ in FAMILIES.values():
    for arg in args[:1]:
      keys |= {k for k, _ in numeric_keys(get_config(arg))}
  assert set(ZERO_IS_LEGAL) | set(NEGATIVE_IS_LEGAL) <= keys, (
      (set(ZERO_IS_LEGAL) | set(NEGATIVE_IS_LEGAL)) - keys)


def test_the_keys_of_the_bug_report_are_named():
  config = mnist.get_config("crvae,cpu")
  config.train.log_every_steps = 0  # was a ZeroDivisionError after compiling (77 s)
  with pytest.raises(config_checks.ConfigError, match=r"config.train.log_every_steps=0"):
    config_checks.check_mnist_config(config, 1)
  config = mnist.get_config("crvae,cpu")
  config.train.seed = -1  # failed in the data loader, without the key
  with pytest.raises(config_checks.ConfigError, match=r"config.train.seed=-1"):
    config_checks.check_mnist_config(config, 1)
