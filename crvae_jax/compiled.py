"""How every jitted step and evaluator is compiled: the one place for CPU tuning.

The convolution kernels a model runs are chosen by its `conv_impl` ('fastest' picks
'onednn' on the CPU backend where it builds, else 'cpu', and 'xla' on GPU/TPU;
`models.layers.resolve_conv_impl`). Programs that run the 'cpu' or 'onednn' kernels are
compiled with XLA CPU options that keep YNNPACK for dots and reductions only: its
convolutions are slow for the decoders' narrow layers, and with XLA's own conv kernels
the autodiff conv gradients are fast too (step-level A/B: `benchmarks/ab_train_step.py`,
figures in benchmarks/RESULTS.md). Elsewhere XLA's
defaults apply. `jit` below is what the train steps, evaluators, the likelihood
estimator, completion and the picture grids use, so none of them can miss it.
"""

from typing import Callable, Optional

import jax

from crvae_jax.models import layers

_CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(conv_impl: str = "auto") -> Optional[dict]:
  """`jax.jit(..., compiler_options=...)` for programs that run conv_impl's kernels: the
  CPU options above for 'cpu' and 'onednn', None (XLA's defaults) otherwise."""
  return dict(_CPU_COMPILER_OPTIONS) if layers.resolve_conv_impl(conv_impl) in (
      "cpu", "onednn") else None


def jit(fn: Callable, *, model=None, donate_argnums=()) -> Callable:
  """`jax.jit(fn)` with the compiler options of `model`'s kernels (its conv_impl; 'auto'
  for models without one, such as the estimator's toy models, or for model=None)."""
  options = compiler_options(getattr(model, "conv_impl", "auto"))
  return jax.jit(fn, donate_argnums=donate_argnums, compiler_options=options)
