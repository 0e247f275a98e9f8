"""Stand-in of Forge's backend/diffusion_engine/base.py: the model's parts, and the model object
`p.sd_model` is in Forge (no `.model.diffusion_model`: its UNet is in `forge_objects.unet`), with
SD1.5's `decode_first_stage` (backend/diffusion_engine/sd15.py)."""

import torch


class ForgeObjects:
    def __init__(self, unet, clip, vae, clipvision):
        self.unet = unet
        self.clip = clip
        self.vae = vae
        self.clipvision = clipvision

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class ForgeDiffusionEngine:
    def __init__(self, forge_objects, sd_checkpoint_info):
        self.forge_objects = forge_objects
        self.forge_objects_original = forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = forge_objects.shallow_copy()
        self.sd_checkpoint_info = sd_checkpoint_info
        self.is_sdxl = False

    @torch.inference_mode()
    def decode_first_stage(self, x):
        """As Forge's StableDiffusion: the VAE patcher's `process_out`, `decode`, back to [-1, 1]."""
        sample = self.forge_objects.vae.first_stage_model.process_out(x)
        sample = self.forge_objects.vae.decode(sample).movedim(-1, 1) * 2.0 - 1.0
        return sample.to(x)
