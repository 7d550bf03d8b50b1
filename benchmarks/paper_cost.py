r"""What reproducing a Table 1 row at paper scale costs, in FLOPs and in GPU hours.

  python -m benchmarks.paper_cost --rows=vae,crvae,criwa,crvae_2layer

Counts (benchmarks/flops.py: traced plain formulation, LSTM scans times T) the FLOPs of
one training image (forward + backward of the config's objective) and of one importance
sample of the estimator, then multiplies by the paper's protocol: 200 epochs of 50,000
images, and K = 10,000 samples for each of 10,000 test images. Hours are printed for a
few *sustained* fp32 rates: the rate is an assumption, stated in each column, not a
measurement (no GPU was available where this was written).
"""

import argparse

import jax
import jax.numpy as jnp

from benchmarks.flops import count_flops
from benchmarks.nll_eval import flops_per_sample
from crvae_jax import host_memory, randomness
from crvae_jax.families import mnist as mnist_family
from crvae_jax.train import mnist_step
from experiments.configs import mnist as mnist_configs

RATES_TFLOPS = (5.0, 10.0, 20.0)


def train_flops_per_image(config, batch: int = 8) -> float:
  """Forward + backward FLOPs of the training objective, per image (plain formulation)."""
  config = config.copy_and_resolve_references()
  config.model.conv_impl = "xla"
  model = mnist_family.build_model(config).clone(bn_axis_name=None)
  variables = jax.eval_shape(lambda: mnist_family.init_variables(model, 0))  # shapes only
  objective = mnist_step.make_objective(config.objective, config.model.num_blocks)
  x = jax.ShapeDtypeStruct((batch, 28, 28, 1), jnp.float32)
  keys = randomness.example_keys(jax.random.key(0), jnp.arange(batch))
  eps1, eps2 = randomness.latent_noise(keys, jnp.arange(config.objective.num_samples),
                                       model.latent_shape, model.top_dim)

  def loss(params, batch_stats, x):
    out, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, eps1, eps2,
                         train=True, mutable=["batch_stats"])
    return objective(out).loss

  return count_flops(jax.grad(loss), variables["params"], variables["batch_stats"],
                     x) / batch


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rows", default="vae,crvae,criwa,crvae_2layer")
  args = p.parse_args()
  header = " | ".join(f"hours at {r:g} TFLOP/s" for r in RATES_TFLOPS)
  print(f"| row | train GFLOP/image | eval MFLOP/sample | train PFLOP | eval PFLOP | "
        f"{header} |")
  print("|---" * (5 + len(RATES_TFLOPS)) + "|")
  for row in args.rows.split(","):
    config = mnist_configs.get_config(row)
    train = train_flops_per_image(config)
    sample = flops_per_sample(config, config.eval.num_samples)
    train_total = train * 50_000 * config.train.num_epochs
    eval_total = sample * config.eval.num_samples * 10_000
    hours = " | ".join(f"{(train_total + eval_total) / (r * 1e12) / 3600:.1f}"
                       for r in RATES_TFLOPS)
    print(f"| {row} | {train / 1e9:.2f} | {sample / 1e6:.0f} | {train_total / 1e15:.1f} | "
          f"{eval_total / 1e15:.1f} | {hours} |", flush=True)


if __name__ == "__main__":
  host_memory.reexec_with_hugepages()
  main()
