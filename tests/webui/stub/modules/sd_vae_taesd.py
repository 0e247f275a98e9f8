"""Stand-in of modules/sd_vae_taesd.py: `decoder_model()` returns the cached TAESD decoder (an
`nn.Sequential`: the webui calls it directly), built at first use; `sd_vae_taesd_models` caches
it by file name. Here a seeded random, narrower decoder of TAESD's kind (3x3 convolutions, ReLU,
nearest upsampling, tanh clamp) stands in for the downloaded weights."""

import torch
from torch import nn

sd_vae_taesd_models = {}
loads = []  # the file names "downloaded" (tests check nobody loads it but the webui's own call)


class Clamp(nn.Module):
    @staticmethod
    def forward(x):
        return torch.tanh(x / 3) * 3


def _decoder(latent_channels=4, width=16):
    torch.manual_seed(11)

    def conv(n_in, n_out):
        return nn.Conv2d(n_in, n_out, 3, padding=1)

    return nn.Sequential(
        Clamp(), conv(latent_channels, width), nn.ReLU(),
        conv(width, width), nn.ReLU(), nn.Upsample(scale_factor=2), conv(width, width), nn.ReLU(),
        conv(width, 3),
    )  # fmt: skip


class TAESDDecoder(nn.Module):
    latent_magnitude = 3
    latent_shift = 0.5

    def __init__(self, decoder_path="taesd_decoder.pth", latent_channels=None):
        super().__init__()
        self.decoder = _decoder(latent_channels or 4)


def decoder_model():
    model_name = "taesd_decoder.pth"
    loaded_model = sd_vae_taesd_models.get(model_name)
    if loaded_model is None:
        loads.append(model_name)
        loaded_model = TAESDDecoder(model_name)
        loaded_model.eval()
        sd_vae_taesd_models[model_name] = loaded_model
    return loaded_model.decoder
