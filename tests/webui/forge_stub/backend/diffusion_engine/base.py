"""Stand-in of Forge's backend/diffusion_engine/base.py: the model's parts, and the model object
`p.sd_model` is in Forge (no `.model.diffusion_model`: its UNet is in `forge_objects.unet`)."""


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
