r"""Stage2 (64 -> 128, LSUN 64 -> 224) super-resolution GAN on a frozen Stage1 (docs/models.md).

`get_config("DATASET_MODEL[,cpu]")`: DATASET one of birds, celeba, lsun, emoji; MODEL one
of vaegan, crvaegan, naming the Stage1 run it refines (`stage1.workdir`, trained with
experiments/configs/rgb.py:DATASET_MODEL[,cpu]). Size 128 (LSUN 224); perceptual loss
VGG11 with gamma 1 (LSUN: ResNet50, gamma 10); CelebA upsamples with 4x4/2 transposed
convs, and its VAE-GAN row encodes only to 32x32 (docs/models.md, section 5).

The perceptual network's ImageNet weights are a local file (nothing downloads at run
time); convert torchvision's checkpoint once with experiments/convert_torchvision_weights.py.
Without `perceptual.weights`, a config with gamma > 0 stops before training and says so.

Paper scale (GPU; Stage1 trained first into runs/celeba_crvaegan):
  python -m experiments.convert_torchvision_weights --arch=vgg11 \
      --input=vgg11-8a719046.pth --output=weights/vgg11.npz
  python -m experiments.main --config=experiments/configs/stage2.py:celeba_crvaegan \
      --config.perceptual.weights=weights/vgg11.npz \
      --workdir=runs/celeba_crvaegan_stage2 --mode=train,sample
  # the paper's "without perceptual loss" row: --config.objective.gamma=0
CPU demo (emoji, after the Stage1 CPU run of experiments/configs/rgb.py:emoji_crvaegan,cpu
into runs/emoji_crvaegan_cpu; width 8, batch 16, 3,000 steps, about 7 minutes on 2 cores):
  python -m experiments.main --config=experiments/configs/stage2.py:emoji_crvaegan,cpu \
      --workdir=runs/emoji_crvaegan_stage2_cpu --mode=train,sample

Emoji: the images exist only at 64x64, so the 128x128 targets are bicubic upscalings
(`data.allow_upscaling`): Stage2 learns to turn Stage1's outputs into smooth upscaled
drawings, a check that the pipeline trains, not super-resolution of real detail. No
pretrained weights exist on an offline machine, so the emoji rows default to gamma 0;
with a converted file: --config.perceptual.weights=weights/vgg11.npz --config.objective.gamma=1.
They also use the non-saturating generator loss -log D(G) (see `objective.adversarial`).
"""

import ml_collections
from ml_collections import config_dict

from experiments.configs import rgb as rgb_configs

# dataset: (image size, perceptual network, gamma)
DATASETS = {
    "birds": (128, "vgg11", 1.0),
    "celeba": (128, "vgg11", 1.0),
    "lsun": (224, "resnet50", 10.0),
    "emoji": (128, "vgg11", 0.0),  # ours: no pretrained weights offline
}
MODELS = rgb_configs.MODELS
ROWS = tuple(f"{d}_{m}" for d in DATASETS for m in MODELS)


def get_config(arg: str = "celeba_crvaegan") -> ml_collections.ConfigDict:
  parts = [p for p in (arg or "celeba_crvaegan").split(",") if p]
  row, modifiers = parts[0], set(parts[1:])
  if row not in ROWS:
    raise ValueError(f"unknown Stage2 config row {row!r}; choose one of {list(ROWS)}")
  unknown = modifiers - {"cpu"}
  if unknown:
    raise ValueError(f"unknown config modifier(s) {sorted(unknown)}; allowed: 'cpu'")
  dataset, variant = row.rsplit("_", 1)
  size, network, gamma = DATASETS[dataset]
  cpu = "cpu" in modifiers
  stage1_row = row + (",cpu" if cpu else "")
  stage1 = rgb_configs.get_config(stage1_row)

  c = ml_collections.ConfigDict()
  c.family = "stage2"  # experiments/main.py runs crvae_jax.families.stage2
  c.dataset = dataset
  c.row = row
  c.scale = "cpu" if cpu else "paper"

  c.stage1 = ml_collections.ConfigDict()
  # The Stage1 run (trained with experiments/configs/rgb.py:<row>[,cpu]); its config is
  # read from <stage1.workdir>/config.json and saved with the Stage2 run.
  c.stage1.workdir = f"runs/{row}" + ("_cpu" if cpu else "")
  c.stage1.checkpoint_step = config_dict.placeholder(int)  # None: the latest, pinned in
  # <workdir>/stage1.json at the first start so a resumed run keeps the same Stage1

  c.model = ml_collections.ConfigDict()
  c.model.image_size = size
  c.model.width = 128  # generator base channels c: 4c = 512 in the residual blocks
  c.model.disc_width = 64  # discriminator: 64, 128, 256, 512, 512
  c.model.encode_to = 32 if row == "celeba_vaegan" else 16
  c.model.upsample = "deconv" if dataset == "celeba" else "nearest"
  c.model.num_res_blocks = 4
  c.model.conv_impl = "fastest"  # as in configs/mnist.py

  c.objective = ml_collections.ConfigDict()
  c.objective.gamma = gamma  # perceptual term; 0 = "without perceptual loss"
  # log(1 - D(G)) as in the paper, or -log D(G) ("non_saturating"): the emoji rows (ours)
  # use the latter. With the paper's form the CPU demo's discriminator wins at once
  # (accuracy 1.00, generator loss -0.02 after 300 steps) and the generator never learns;
  # with -log D its outputs follow the Stage1 input (tried on the emoji VAE-GAN run).
  c.objective.adversarial = "non_saturating" if dataset == "emoji" else "saturating"

  c.perceptual = ml_collections.ConfigDict()
  c.perceptual.network = network  # 'vgg11' or 'resnet50'
  c.perceptual.weights = ""  # .npz from experiments/convert_torchvision_weights.py
  c.perceptual.layer = ""  # "" = the module's default cut (vgg11 relu4_2, resnet50 layer2)

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 2e-4  # generator and discriminator
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8  # (StackGAN used b1 = 0.5)

  c.data = stage1.data  # the Stage1 dataset, loaded at the high resolution
  c.data.load_size = size + size // 8 if c.data.random_crop else size  # LSUN 252 -> 224
  c.data.allow_upscaling = dataset == "emoji"  # emoji: 64 -> 128 bicubic

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # (not given in the paper)
  c.train.num_steps = 50_000  # (not given in the paper)
  c.train.seed = 0
  c.train.log_every_steps = 100
  c.train.checkpoint_every_steps = 2_000
  # Also keep every checkpoint at a multiple of this step (0: only the last two), e.g.
  # to score the run at several points of its training (experiments/completion_table).
  c.train.keep_checkpoint_every_steps = 0
  c.train.sample_every_steps = 2_000
  c.train.num_devices = config_dict.placeholder(int)  # None: all devices
  c.train.resume_other_config = False
  c.train.max_nonfinite_steps = 10

  c.sample = ml_collections.ConfigDict()
  c.sample.num_images = 16
  c.sample.seed = 0
  c.sample.checkpoint_step = config_dict.placeholder(int)  # None: the latest

  if cpu:
    c.model.width = 8
    c.model.disc_width = 8
    c.model.num_res_blocks = 2
    c.train.batch_size = 16
    # After 300 steps the emoji Stage2's outputs were red frames (discriminator accuracy
    # 0.99); after 3,000 they are orange, blocky faces, mostly the same one whatever the
    # input (results/emoji_crvaegan_stage2_cpu/summary.md, README "Stage2").
    c.train.num_steps = 3_000
    c.train.log_every_steps = 50
    c.train.checkpoint_every_steps = 500
    c.train.sample_every_steps = 500
  return c
