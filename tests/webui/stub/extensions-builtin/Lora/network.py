"""Stand-in of the webui's extensions-builtin/Lora/network.py (v1.10): the network object the
extension loads and the base class of its layer modules, with the real names, multipliers and
scale (`alpha / dim`), so the adapter reads them as it reads the real ones."""

from __future__ import annotations

import torch


class Network:  # the webui's LoraModule
    def __init__(self, name, network_on_disk=None):
        self.name = name
        self.network_on_disk = network_on_disk
        self.te_multiplier = 1.0
        self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.modules = {}
        self.bundle_embeddings = {}
        self.mtime = None
        self.mentioned_name = None


class NetworkWeights:
    def __init__(self, network_key, sd_key, w, sd_module):
        self.network_key = network_key
        self.sd_key = sd_key
        self.w = w
        self.sd_module = sd_module


class NetworkModule:
    def __init__(self, net: Network, weights: NetworkWeights):
        self.network = net
        self.network_key = weights.network_key
        self.sd_key = weights.sd_key
        self.sd_module = weights.sd_module
        self.shape = self.sd_module.weight.shape
        self.dim = None
        self.bias = weights.w.get("bias")
        self.alpha = weights.w["alpha"].item() if "alpha" in weights.w else None
        self.scale = weights.w["scale"].item() if "scale" in weights.w else None
        self.dora_scale = weights.w.get("dora_scale", None)

    def multiplier(self):
        if "transformer" in self.sd_key[:20]:
            return self.network.te_multiplier
        return self.network.unet_multiplier

    def calc_scale(self):
        if self.scale is not None:
            return self.scale
        if self.dim is not None and self.alpha is not None:
            return self.alpha / self.dim
        return 1.0

    def finalize_updown(self, updown, orig_weight, output_shape, ex_bias=None):
        if len(output_shape) == 4:
            updown = updown.reshape(output_shape)
        if orig_weight.size().numel() == updown.size().numel():
            updown = updown.reshape(orig_weight.shape)
        return updown * self.calc_scale() * self.multiplier(), ex_bias

    def calc_updown(self, target: torch.Tensor):
        raise NotImplementedError()
