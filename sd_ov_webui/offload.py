"""The torch UNet's weights while OpenVINO serves: freed (`release`, the default) or kept (`none`).

Freed weights come back from the checkpoint file, bit-exactly (see `sd_ov.torch_weights`),
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

from sd_ov.ldm_unet import CHECKPOINT_UNET_PREFIX
from sd_ov.progress import ProgressFn, silent
from sd_ov.torch_weights import CheckpointTensors, ReleasedWeights, WeightsNotReleasable

log = logging.getLogger("sd_ov")

OFFLOAD_MODES = ("release", "none")


def undo_lora_weights(unet: torch.nn.Module) -> None:
    """Put the base weights back where the webui's Lora extension had merged a LoRA into them
    (its own backup and reset functions); it merges again at its next torch call."""
    networks = sys.modules.get("networks")
    if networks is None:
        return
    for module in unet.modules():
        if (
            getattr(module, "network_weights_backup", None) is not None
            or getattr(module, "network_bias_backup", None) is not None
        ):
            networks.network_restore_weights_from_backup(module)
            networks.network_reset_cached_weight(module)


class TorchUNetWeights:
    """One torch UNet's weights and the checkpoint file they came from."""

    def __init__(self, unet: torch.nn.Module, checkpoint_file: str | Path) -> None:
        self.unet = unet
        self.source = CheckpointTensors(Path(checkpoint_file), CHECKPOINT_UNET_PREFIX)
        self.released: ReleasedWeights | None = None
        self.kept_because: str | None = None  # why the last release was refused

    @property
    def resident(self) -> bool:
        return self.released is None

    def release(self, progress: ProgressFn = silent) -> bool:
        """Free the weights; False (and a log line) when they must stay (see `kept_because`)."""
        if self.released is not None:
            return True
        if self.kept_because is not None:  # refused once for these weights: don't re-read the file every job
            return False
        if int(getattr(shared.opts, "sd_checkpoint_cache", 0) or 0) > 0:
            self.kept_because = "Settings → 'Checkpoints to cache in RAM' holds the weights anyway"
        else:
            try:
                undo_lora_weights(self.unet)
                self.released = ReleasedWeights.release(self.unet, self.source, progress)
                self.kept_because = None
                freed = self.released.freed_bytes / 2**30
                print(f"[sd-ov] torch UNet weights freed while OpenVINO serves ({freed:.1f} GiB)")
                return True
            except (WeightsNotReleasable, OSError) as err:
                self.kept_because = str(err)
        log.warning("sd-ov: the torch UNet stays in memory: %s", self.kept_because)
        return False

    def ensure(self, progress: ProgressFn = silent) -> None:
        """The weights in memory again (a no-op when they are); raises WeightsRestoreError."""
        if self.released is None:
            return
        self.released.restore(progress)
        self.released = None
        print("[sd-ov] torch UNet weights restored from the checkpoint")
