"""The UNet Optimize's calibration pictures sample with: the FP32 IR with its weights compressed to
INT8 (NNCF, weights only), made at its first call in a temporary folder beside the FP32 entry.

Calibration keeps only the UNet's inputs (latents, timesteps, conditioning); NNCF's statistics are
computed later on the recipe's own graph. INT8 weights move those inputs by about what one
weight-only INT8 call differs from FP32 (relative L2 0.026 on SD1.5) and hold a quarter of the
memory. SDXL's compiled FP32 UNet is 9.6 GB: with the webui's text encoders read back for each
calibration prompt beside it, calibration was Optimize's peak in the webui (14.5 GiB, AMD EPYC,
2026-12-02). Nothing is made when the samples were captured before (a DeepCache pair reuses its
recipe's), and no compiled blob is written. A UNet under `INT8_FROM_BYTES` of FP32 weights
(test-sized ones) samples at FP32: there NNCF's pass costs more time than the memory it saves.
"""

from __future__ import annotations

import gc
import os
import uuid
from pathlib import Path

import torch

from ..graphs.export import IR_NAME
from ..progress import ProgressFn, silent
from ..runtime.compress import compress_ir
from ..runtime.unet import OVUNet
from ..store import cache, fs

# SD1.5's FP32 UNet is 3.4 GB, SDXL's 10.3 GB; the test suite's are a few MB.
INT8_FROM_BYTES = 2**30


class CalibrationUNet:
    """A UNet callable that becomes an OpenVINO UNet at INT8 weights (`int8`) on its first call."""

    def __init__(self, fp32: cache.CacheEntry, device: str = "CPU", progress: ProgressFn = silent) -> None:
        self.fp32, self.device, self.progress = fp32, device, progress
        self.int8 = fp32.manifest.disk_bytes >= INT8_FROM_BYTES
        self.folder: Path | None = None
        self.runtime: OVUNet | None = None

    def _open(self) -> OVUNet:
        if self.runtime is None:
            ir = self.fp32.ir_path()
            if self.int8:
                self.folder = self.fp32.path.with_name(
                    f"calibration-unet{cache.TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
                )
                self.folder.mkdir()
                self.progress("calibration model: the FP32 IR with INT8 weights", 0.0)
                ir = self.folder / IR_NAME
                compress_ir(self.fp32.ir_path(), ir, "weights")
            self.runtime = OVUNet(
                ir,
                device=self.device,
                latent_multiple=self.fp32.manifest.unet.size_multiple,
                progress=self.progress,
            )
        return self.runtime

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self._open()(*inputs)

    def release_memory(self) -> int:
        """The compiled model's intermediate buffers back (the webui's capture calls it before a
        calibration picture's VAE decode)."""
        return self.runtime.release_memory() if self.runtime is not None else 0

    def close(self) -> None:
        """Drop the model and delete its folder (a file Windows still maps is left to the cache's
        cleanup of dead writers' temporary folders)."""
        if self.runtime is not None:
            self.runtime.release()
            self.runtime = None
        gc.collect()  # the read IR maps its .bin: unmapped before the folder goes
        if self.folder is not None:
            fs.remove_tree(self.folder)
            self.folder = None
