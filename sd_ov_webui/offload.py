"""The torch UNet's weights while OpenVINO serves: freed (`release`, the default) or kept (`none`).

Freed weights come back from the checkpoint file, bit-exactly (see `sd_ov.runtime.torch_weights`),
before anything needs torch: a call OpenVINO cannot serve, an export, Optimize, or the SD Unet
option being switched off or the checkpoint reloading (the webui deactivates the SD Unet first,
then loads the new weights into the same Parameters).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from modules import shared

from sd_ov import CHECKPOINT_UNET_PREFIX, CheckpointTensors, ModuleWeights, ProgressFn, silent

log = logging.getLogger("sd_ov")

# release: torch weights of what OpenVINO serves leave memory, and the OpenVINO models give their
# buffers back after their phase (compiled once); lowvram: the compiled models go after their phase
# too; none: everything stays.
OFFLOAD_MODES = ("release", "lowvram", "none")


def undo_lora_weights(unet: torch.nn.Module) -> None:
    """Put the base weights back where the webui's Lora extension had merged a LoRA into them
    (its own backup and reset functions); it merges again at its next torch call.

    Under `no_grad`: the extension's `restore_weights_backup` copies in place into the layer's
    weight, which the webui's UNet keeps as a leaf that requires grad. The extension itself only
    calls it inside the webui's sampling (`no_grad`); we call it from the scripts' `process` hook,
    which the webui runs outside, and the copy raised "a leaf Variable that requires grad is being
    used in an in-place operation" after any torch job with a LoRA."""
    networks = sys.modules.get("networks")
    if networks is None:
        return
    with torch.no_grad():
        for module in unet.modules():
            if (
                getattr(module, "network_weights_backup", None) is not None
                or getattr(module, "network_bias_backup", None) is not None
            ):
                networks.network_restore_weights_from_backup(module)
                networks.network_reset_cached_weight(module)


class WebuiWeights(ModuleWeights):
    """A webui module's weights (UNet, text encoder, VAE): the webui's Lora backups are undone
    before the check, and nothing is freed while its checkpoint cache holds the weights anyway."""

    def refuse(self) -> str | None:
        if int(getattr(shared.opts, "sd_checkpoint_cache", 0) or 0) > 0:
            return "Settings → 'Checkpoints to cache in RAM' holds the weights anyway"
        return None

    def prepare_release(self) -> None:
        undo_lora_weights(self.module)

    def release(self, progress: ProgressFn = silent) -> bool:
        was_resident, refused_before = self.resident, self.kept_because is not None
        if super().release(progress):
            if was_resident:
                freed = self.released.freed_bytes / 2**30
                print(f"[sd-ov] {self.what} weights freed while OpenVINO serves ({freed:.2f} GiB)")
            return True
        if not refused_before:  # said once, not at every job
            log.warning("sd-ov: the %s stays in memory: %s", self.what, self.kept_because)
        return False

    def ensure(self, progress: ProgressFn = silent) -> None:
        if not self.resident:
            super().ensure(progress)
            print(f"[sd-ov] {self.what} weights restored from the checkpoint")


def unet_weights(unet: torch.nn.Module, checkpoint_file: str | Path) -> WebuiWeights:
    return WebuiWeights(unet, CheckpointTensors(Path(checkpoint_file), CHECKPOINT_UNET_PREFIX), "torch UNet")
