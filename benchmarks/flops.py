"""Model FLOPs counted from the traced computation (jaxpr), scan bodies times their length.

XLA's `cost_analysis()` counts a loop body once, so a model that scans LSTMs over T steps
would be under-counted. Here every `dot_general` and `conv_general_dilated` in the jaxpr
(and in nested jaxprs: jit, scan x length, custom_vjp/jvp, remat, cond = its dearest
branch) counts 2 FLOPs per multiply-add. A convolution with lhs dilation d (transposed
convolutions, and the gradients of strided ones) counts only the products with real
input pixels, 1/prod(d) of the window (exact in the interior, borders approximate), not
those with the inserted zeros. Element-wise work is not counted (the usual convention).
A `while` loop has no static trip count and is an error.
"""

import math

import jax
from jax._src.interpreters import partial_eval as pe  # dce_jaxpr has no public alias


def count_flops(fn, *args, live_only: bool = False, **kwargs) -> float:
  """FLOPs of one call fn(*args, **kwargs), from its jaxpr. live_only: first drop the
  work whose results are unused (`dce_jaxpr`, as XLA does), e.g. the halves of the GAN
  steps' two `vjp` passes that compute gradients the step does not keep."""
  jaxpr = jax.make_jaxpr(fn)(*args, **kwargs).jaxpr
  if live_only:
    jaxpr, _ = pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
  return _jaxpr_flops(jaxpr)


def _conv_flops(eqn) -> float:
  out = eqn.outvars[0].aval
  rhs = eqn.invars[1].aval
  _, rhs_in_dim, *rhs_spatial = eqn.params["dimension_numbers"].rhs_spec
  taps = math.prod(rhs.shape[d] for d in rhs_spatial)
  # With lhs dilation d (transposed convs and their gradients), only ~1/prod(d) of each
  # window's taps meet a real input pixel; the rest multiply inserted zeros.
  real = 1.0 / math.prod(eqn.params["lhs_dilation"])
  return 2.0 * math.prod(out.shape) * taps * rhs.shape[rhs_in_dim] * real


def _jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      contract = math.prod(lhs.shape[d] for d in lhs_contract)
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * contract
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "while":
      raise ValueError("count_flops: a while loop has no static trip count; count its "
                       "body (e.g. one chunk of the estimator) instead")
    elif name == "cond":
      total += max(_jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
    else:
      for value in eqn.params.values():
        inner = getattr(value, "jaxpr", value)  # ClosedJaxpr -> Jaxpr
        if hasattr(inner, "eqns"):
          total += _jaxpr_flops(inner) * (eqn.params["length"] if name == "scan" else 1)
  return total
