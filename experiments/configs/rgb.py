r"""64x64 RGB Stage1: VAE-GAN and crVAE-GAN on Birds, CelebA, LSUN bedrooms (and emoji).

`get_config("DATASET_MODEL[,cpu]")`: DATASET one of birds, celeba, lsun, emoji; MODEL one
of vaegan, crvaegan. The weights and learning rates are the paper's
(docs/hyperparameters.md); the emoji rows are ours (the offline CPU demo).

Paper scale (needs a GPU; the dataset prepared for tensorflow-datasets, or a folder):
  python -m experiments.main --config=experiments/configs/rgb.py:celeba_crvaegan \
      --workdir=runs/celeba_crvaegan --mode=train,sample
  # CelebA unpacked by hand (img_align_celeba/):
  python -m experiments.main --config=experiments/configs/rgb.py:celeba_crvaegan \
      --config.data.source=folder --config.data.image_dir=~/data/img_align_celeba \
      --workdir=runs/celeba_crvaegan --mode=train,sample
CPU scale (the smileys of the emoji sets from the npm registry; width 8, 28,000 steps of
batch 32, about two hours on 2 cores):
  python -m experiments.main --config=experiments/configs/rgb.py:emoji_crvaegan,cpu \
      --workdir=runs/emoji_crvaegan_cpu --mode=train,sample
"""

import ml_collections
from ml_collections import config_dict

# dataset: (tfds name, horizontal flip, random crop)
DATASETS = {
    "birds": ("caltech_birds2011", True, False),
    "celeba": ("celeb_a", True, False),
    "lsun": ("lsun/bedroom", True, True),
    "emoji": ("", True, False),
}
# (dataset, model): (alpha1 [KL blocks 1-3], alpha2 [the rest], beta, kappa, lr)
WEIGHTS = {
    ("birds", "vaegan"): (2e-4, 2e-4, 0.0125, 0.0, 3e-4),
    ("birds", "crvaegan"): (3e-4, 2e-4, 0.0125, 0.02, 3e-4),
    ("celeba", "vaegan"): (3e-4, 3e-4, 0.01, 0.0, 3e-3),
    ("celeba", "crvaegan"): (3e-4, 2e-4, 0.01, 0.01, 1e-3),
    ("lsun", "vaegan"): (2e-4, 2e-4, 0.025, 0.0, 3e-4),
    ("lsun", "crvaegan"): (3e-4, 2e-4, 0.0125, 0.01, 1e-4),
    # Ours (not in the paper): Birds' weights, lr 1e-3 for short CPU runs.
    ("emoji", "vaegan"): (2e-4, 2e-4, 0.0125, 0.0, 1e-3),
    ("emoji", "crvaegan"): (3e-4, 2e-4, 0.0125, 0.02, 1e-3),
}
# Held-out tfds split for --mode=complete (emoji: completion.emoji_split instead).
HELD_OUT_SPLITS = {"birds": "test", "celeba": "test", "lsun": "validation", "emoji": ""}
MODELS = ("vaegan", "crvaegan")
ROWS = tuple(f"{d}_{m}" for d in DATASETS for m in MODELS)


def get_config(arg: str = "celeba_crvaegan") -> ml_collections.ConfigDict:
  parts = [p for p in (arg or "celeba_crvaegan").split(",") if p]
  row, modifiers = parts[0], set(parts[1:])
  if row not in ROWS:
    raise ValueError(f"unknown RGB config row {row!r}; choose one of {list(ROWS)}")
  unknown = modifiers - {"cpu"}
  if unknown:
    raise ValueError(f"unknown config modifier(s) {sorted(unknown)}; allowed: 'cpu'")
  dataset, variant = row.rsplit("_", 1)
  tfds_name, flip, crop = DATASETS[dataset]
  alpha1, alpha2, beta, kappa, lr = WEIGHTS[(dataset, variant)]

  c = ml_collections.ConfigDict()
  c.family = "stage1"  # experiments/main.py runs crvae_jax.families.stage1
  c.dataset = dataset
  c.row = row
  c.scale = "cpu" if "cpu" in modifiers else "paper"

  c.model = ml_collections.ConfigDict()
  c.model.variant = variant
  c.model.num_blocks = 8  # T
  c.model.width = 32  # base channels (paper 32: encoder ends at 4x4x256)
  c.model.lstm_hidden = 512
  c.model.latent_channels = 64  # latent 4x4x64 = 1024 dims
  c.model.disc_hidden = 1024  # discriminator head Dense(4096 -> 1024)
  c.model.minibatch_kernels = 100
  c.model.minibatch_kernel_dim = 5
  c.model.conv_impl = "fastest"  # as in configs/mnist.py
  # Hand-written backward passes for the LSTMs and BatchNorms (crvae_jax/models/
  # fused_backward.py): same values to float rounding, faster on CPU; as in mnist.py.
  c.model.fused_backward = True

  c.objective = ml_collections.ConfigDict()
  c.objective.alpha1 = alpha1  # KL weight, latent blocks 1-3
  c.objective.alpha2 = alpha2  # KL weight, blocks 4..T
  c.objective.beta = beta  # adversarial term
  c.objective.kappa = kappa  # MI term (0: no MI head; always 0 for vaegan)
  c.objective.max_d_accuracy = 0.9  # skip D's update when its batch accuracy is above
  # (1.0: never skip; a negative value freezes the discriminator)

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = lr  # encoder / decoder / MI head / discriminator heads
  c.optim.lstm_lr_divisor = 8.0  # LSTMs at lr / 8 ...
  c.optim.lstm_grad_clip = 5.0  # ... with element-wise clipping
  c.optim.halve_every_steps = 0  # 0: constant learning rates (none given)
  # The release's optional extras, off by default: discriminator trunk at lr * 0.5, and
  # the discriminator's lr at 1/50 for its first 10 applied updates, 1/5 until 30.
  c.optim.disc_trunk_lr_factor = 1.0
  c.optim.disc_warmup = False
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8

  c.data = ml_collections.ConfigDict()
  c.data.source = "emoji" if dataset == "emoji" else "tfds"  # 'tfds', 'folder', 'emoji'
  c.data.tfds_name = tfds_name
  c.data.tfds_split = "train"
  c.data.tfds_data_dir = ""  # "" = tfds's default (~/tensorflow_datasets)
  c.data.image_dir = ""  # source 'folder': a folder of JPEG/PNG images (recursive)
  c.data.allow_other_files = False  # 'folder': skip non-image files instead of failing
  c.data.convert_to_rgb = False  # 'folder': convert grayscale/RGBA/palette images
  c.data.allow_upscaling = False  # 'folder': accept images smaller than load_size
  c.data.verify_images = False  # 'folder': decode every file at start, name each bad one
  c.data.skip_bad_images = False  # with verify_images: leave bad files out, not fail
  # source 'emoji' (crvae_jax/data/emoji.py): the image sets, each the same 3,786 emoji
  # drawn by another vendor: 'google' (Noto, Apache-2.0), 'twitter' (Twemoji, CC-BY 4.0),
  # or both, 'google,twitter' (7,572 images).
  c.data.emoji_sets = "google"
  # Which emoji: 'train' (default since issue 19: the ~91% not held out, 3,449 of the
  # 3,786 per set), 'heldout' (the rest, for completion and held-out errors) or 'all'.
  c.data.emoji_split = "train"
  # Unicode categories to keep, comma-separated ("" = all; crvae_jax/data/emoji.py,
  # CATEGORIES), e.g. "Smileys & Emotion" (169 emoji per set).
  c.data.emoji_categories = ""
  c.data.emoji_tarball = ""  # local emoji-datasource-<set> tarballs, one per set, "a,b"
  c.data.cache_dir = ""  # source 'emoji': "" = ~/.cache/crvae_jax/emoji
  c.data.allow_download = True  # source 'emoji': `npm pack` when not cached
  c.data.flip = flip  # random horizontal flips
  # Random crops: images are decoded at load_size and cropped to 64 (LSUN: 72 -> 64,
  # our choice of margin); without random_crop, load_size must be 64.
  c.data.random_crop = crop
  c.data.load_size = 72 if crop else 64
  c.data.num_workers = 8  # decoding threads

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # global real images per step (not given in the paper)
  c.train.num_steps = 100_000  # (not given in the paper)
  c.train.seed = 0
  c.train.log_every_steps = 100
  c.train.checkpoint_every_steps = 2_000
  # Also keep every checkpoint at a multiple of this step (0: only the last two), e.g.
  # to score the run at several points of its training (experiments/completion_table).
  c.train.keep_checkpoint_every_steps = 0
  c.train.sample_every_steps = 2_000  # prior-sample and reconstruction grids (PNG)
  c.train.num_devices = config_dict.placeholder(int)  # None: all devices
  c.train.resume_other_config = False
  c.train.max_nonfinite_steps = 10

  c.sample = ml_collections.ConfigDict()
  c.sample.num_images = 64
  c.sample.seed = 0
  c.sample.checkpoint_step = config_dict.placeholder(int)  # None: the latest

  # --mode=complete (docs/objectives.md, O11; crvae_jax/completion.py). Adam on z from the
  # posterior mean of the masked image; lr and steps are ours (not in the paper).
  c.completion = ml_collections.ConfigDict()
  c.completion.masks = "center,left,right,top,bottom,random_blocks"  # the hidden part
  c.completion.num_images = 16  # images chosen by completion.seed
  c.completion.seed = 0  # which images; where the random blocks fall
  c.completion.steps = 1000
  c.completion.learning_rate = 0.03
  c.completion.gamma = 1e-5  # prior penalty gamma ||z||^2 / 2
  c.completion.tau = 0.003  # tau log(1 - D(x^))
  c.completion.batch_size = 64  # images optimised at once
  # tfds sources: complete images of this held-out split ("" = data.tfds_split).
  c.completion.tfds_split = HELD_OUT_SPLITS[dataset]
  c.completion.emoji_split = "heldout"  # emoji source: complete images of this split

  if c.scale == "cpu":
    c.model.width = 8
    c.model.lstm_hidden = 64
    c.model.latent_channels = 32
    c.model.disc_hidden = 256
    c.model.minibatch_kernels = 32
    c.train.batch_size = 32
    c.train.num_steps = 600
    c.train.log_every_steps = 25
    c.train.checkpoint_every_steps = 200
    c.train.sample_every_steps = 200
    if dataset == "emoji":  # the CPU budget of issue 19: both vendors' drawings of the
      # 'Smileys & Emotion' emoji (300 training images, 38 held out), 28,000 steps of 32
      # (about two hours each on 2 cores with the default kernels; each run's time is in
      # results/emoji_*_cpu/summary.md), KL weight 1e-3 on every block (5x Birds'): at
      # Birds' weights and 8,000 steps most VAE-GAN prior samples were blobs; the pilots
      # that chose these settings are in results/pilots/README.md.
      # On all 6,898 training emoji this model's prior samples stayed coloured blobs
      # after 12,000 steps; on the smileys they are faces within 500 (issue 19's note of
      # 2026-12-04).
      c.data.emoji_sets = "google,twitter"
      c.data.emoji_categories = "Smileys & Emotion"
      c.objective.alpha1 = c.objective.alpha2 = 1e-3
      c.train.num_steps = 28_000
      c.train.log_every_steps = 100
      c.train.checkpoint_every_steps = 500
      # Keeps the checkpoint of every 4,000th step, to score the run along its training.
      c.train.keep_checkpoint_every_steps = 4_000
      c.train.sample_every_steps = 1_000
    c.completion.num_images = 8
    c.completion.steps = 200
  return c
