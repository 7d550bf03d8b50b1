"""Flax Linen models: the channel-recurrent latent block and the MNIST family."""
