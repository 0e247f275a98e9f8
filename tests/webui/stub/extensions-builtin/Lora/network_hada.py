"""Stand-in of extensions-builtin/Lora/network_hada.py (v1.10): LoHa, the Hadamard product of two
low-rank products: not a low-rank update, so sd-ov can't put it on its LoRA branch."""

from __future__ import annotations

import network


class NetworkModuleHada(network.NetworkModule):
    def __init__(self, net: network.Network, weights: network.NetworkWeights):
        super().__init__(net, weights)
        self.w1a, self.w1b = weights.w["hada_w1_a"], weights.w["hada_w1_b"]
        self.w2a, self.w2b = weights.w["hada_w2_a"], weights.w["hada_w2_b"]
        self.dim = self.w1b.shape[0]

    def calc_updown(self, orig_weight):
        updown = (self.w1a @ self.w1b) * (self.w2a @ self.w2b)
        return self.finalize_updown(updown, orig_weight, list(orig_weight.shape))
