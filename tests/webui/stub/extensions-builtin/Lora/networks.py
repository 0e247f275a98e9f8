"""Stand-in of extensions-builtin/Lora/networks.py (v1.10): the list of networks loaded for the
current job, which the webui fills from the prompt's <lora:name:weight> before sampling, and the
way the extension applies them on torch: the patched `Linear`/`Conv2d` forwards merge each layer's
`calc_updown` into its weight in place, keeping a backup, and restore the backup when the loaded
set changes (`network_apply_weights`, `network_restore_weights_from_backup`,
`network_reset_cached_weight`, with the real names and the same in-place copies: the restore's
`copy_` runs outside `no_grad`, as the extension's does)."""

from __future__ import annotations

import torch

loaded_networks = []
available_networks = {}  # name -> the stand-in's Network (the real one's: NetworkOnDisk of models/Lora)


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    """The extension's entry point (real signature): the named networks become the loaded ones
    with their weights; a name with no file is left out (the real one logs "Networks not found")."""
    loaded_networks.clear()
    for i, name in enumerate(names):
        net = available_networks.get(name)
        if net is None:
            continue
        net.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
        net.unet_multiplier = unet_multipliers[i] if unet_multipliers else 1.0
        net.dyn_dim = dyn_dims[i] if dyn_dims else None
        loaded_networks.append(net)


class originals:  # noqa: N801 - the extension's own holder of the torch forwards it replaces
    Linear_forward = torch.nn.Linear.forward
    Conv2d_forward = torch.nn.Conv2d.forward


def assign_network_names_to_compvis_modules(sd_model) -> None:
    """The UNet's layers by the extension's names: `sd_model.model.named_modules()` with dots as
    underscores (`diffusion_model_<path>`; the stand-in's `model` holds only the UNet)."""
    for name, module in sd_model.model.diffusion_model.named_modules():
        module.network_layer_name = f"diffusion_model.{name}".replace(".", "_")


def store_weights_backup(weight):
    if weight is None:
        return None
    return weight.to("cpu", copy=True)


def restore_weights_backup(obj, field, weight):
    if weight is None:
        setattr(obj, field, None)
        return
    getattr(obj, field).copy_(weight)


def network_restore_weights_from_backup(self):
    weights_backup = getattr(self, "network_weights_backup", None)
    bias_backup = getattr(self, "network_bias_backup", None)
    if weights_backup is None and bias_backup is None:
        return
    if weights_backup is not None:
        restore_weights_backup(self, "weight", weights_backup)
    restore_weights_backup(self, "bias", bias_backup)


def network_apply_weights(self):
    network_layer_name = getattr(self, "network_layer_name", None)
    if network_layer_name is None:
        return
    current_names = getattr(self, "network_current_names", ())
    wanted_names = tuple((x.name, x.te_multiplier, x.unet_multiplier, x.dyn_dim) for x in loaded_networks)
    if getattr(self, "network_weights_backup", None) is None and wanted_names != ():
        if current_names != ():
            raise RuntimeError(f"{network_layer_name} - no backup weights found and current weights changed")
        self.network_weights_backup = store_weights_backup(self.weight)
    if getattr(self, "network_bias_backup", None) is None and wanted_names != ():
        self.network_bias_backup = store_weights_backup(self.bias)
    if current_names != wanted_names:
        network_restore_weights_from_backup(self)
        for net in loaded_networks:
            module = net.modules.get(network_layer_name, None)
            if module is not None:
                with torch.no_grad():
                    updown, _ = module.calc_updown(self.weight)
                    merged = self.weight.to(dtype=updown.dtype) + updown
                    self.weight.copy_(merged.to(dtype=self.weight.dtype))
        self.network_current_names = wanted_names


def network_reset_cached_weight(self):
    self.network_current_names = ()
    self.network_weights_backup = None
    self.network_bias_backup = None


def network_Linear_forward(self, input):  # noqa: N802 - the extension's name
    network_apply_weights(self)
    return originals.Linear_forward(self, input)


def network_Conv2d_forward(self, input):  # noqa: N802 - the extension's name
    network_apply_weights(self)
    return originals.Conv2d_forward(self, input)
