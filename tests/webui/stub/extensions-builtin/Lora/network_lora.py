"""Stand-in of extensions-builtin/Lora/network_lora.py (v1.10): `up_model`/`down_model` built as
the webui builds them (Linear, or Conv2d with the layer's kernel for the down or mid of a conv),
and the webui's `calc_updown` math (`up @ down`, cut to dyn_dim, or the CP rebuild with a mid; then
scale and multiplier)."""

from __future__ import annotations

import network
import torch


class NetworkModuleLora(network.NetworkModule):
    def __init__(self, net: network.Network, weights: network.NetworkWeights):
        super().__init__(net, weights)
        self.up_model = self.create_module(weights.w, "lora_up.weight")
        self.down_model = self.create_module(weights.w, "lora_down.weight")
        self.mid_model = self.create_module(weights.w, "lora_mid.weight", none_ok=True)
        self.dim = weights.w["lora_down.weight"].shape[0]

    def create_module(self, weights, key, none_ok=False):
        weight = weights.get(key)
        if weight is None and none_ok:
            return None
        if isinstance(self.sd_module, torch.nn.Linear):
            weight = weight.reshape(weight.shape[0], -1)
            module = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        elif key == "lora_mid.weight":
            module = torch.nn.Conv2d(
                weight.shape[1],
                weight.shape[0],
                self.sd_module.kernel_size,
                self.sd_module.stride,
                self.sd_module.padding,
                bias=False,
            )
        elif key == "lora_down.weight":
            if weight.dim() == 2:
                weight = weight.reshape(weight.shape[0], -1, 1, 1)
            kernel = tuple(weight.shape[2:])
            if kernel != (1, 1):
                module = torch.nn.Conv2d(
                    weight.shape[1],
                    weight.shape[0],
                    kernel,
                    self.sd_module.stride,
                    self.sd_module.padding,
                    bias=False,
                )
            else:
                module = torch.nn.Conv2d(weight.shape[1], weight.shape[0], (1, 1), bias=False)
        else:
            module = torch.nn.Conv2d(weight.shape[1], weight.shape[0], (1, 1), bias=False)
        with torch.no_grad():
            module.weight.copy_(weight.reshape(module.weight.shape))
        module.weight.requires_grad_(False)
        return module

    def calc_updown(self, orig_weight):
        up = self.up_model.weight.reshape(self.up_model.weight.shape[0], -1)
        down = self.down_model.weight
        output_shape = [up.size(0), down.size(1)]
        if self.mid_model is not None:  # lyco_helpers.rebuild_cp_decomposition
            mid = self.mid_model.weight
            updown = torch.einsum("n m k l, i n, m j -> i j k l", mid, up, down.reshape(down.size(0), -1))
            return self.finalize_updown(updown, orig_weight, output_shape + list(mid.shape[2:]))
        if down.dim() == 4:
            output_shape += down.shape[2:]
        down = down.reshape(down.size(0), -1)
        if self.network.dyn_dim is not None:
            up, down = up[:, : self.network.dyn_dim], down[: self.network.dyn_dim]
        return self.finalize_updown((up @ down).reshape(output_shape), orig_weight, output_shape)
