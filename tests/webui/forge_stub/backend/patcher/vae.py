"""Stand-in of Forge's backend/patcher/vae.py: the VAE patcher, whose `decode` gives pictures in
[0, 1], channels last, from its model's output in [-1, 1]; its model scales latents in and out
(`process_in`, `process_out`) as Forge's IntegratedAutoencoderKL does."""

import torch


class VAE:
    def __init__(self, model=None, latent_channels=4):
        self.first_stage_model = model
        self.latent_channels = latent_channels

    def decode(self, samples_in):
        out = self.first_stage_model.decode(samples_in)
        return torch.clamp((out + 1.0) / 2.0, min=0.0, max=1.0).movedim(1, -1)
