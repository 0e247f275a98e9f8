"""The VAE on OpenVINO: decode (latent → picture) and encode (picture → latent moments) of an ldm
`AutoencoderKL` (the webui's `first_stage_model`), cached like the UNet.

Why: at 512² the torch VAE decode is a large share of a picture once the UNet is fast, and its
weights are 0.3 GB more of torch beside OpenVINO. The decoder's output can be turned into 8-bit
HWC pixels inside the graph (`PrePostProcessor`: scale, clamp, u8, layout), the same arithmetic
as the webui's `255 * clamp((x + 1) / 2, 0, 1)`, for hosts that want pixels (the demo, the bench);
the webui gets the float tensor it expects.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import torch
import torch.nn.functional as F

from ..constants import VAE_PRECISIONS
from ..errors import UnsupportedModelError
from ..graphs.export import save_ir, trace_to_openvino
from ..graphs.traceable_unet import zero_padding
from ..progress import ProgressFn, silent
from ..store import cache
from ..store.recipe import Recipe
from .compiled import EntryPart
from .ov_core import compile_properties, device_kind

# The VAE's inference precision: "auto" is bf16 on a CPU that runs bf16 faster than f32 (measured
# once per machine, `cpu_caps`), f32 elsewhere. Never f16: the VAE's activations overflow f16's
# range (the webui's --no-half-vae, black or NaN pictures); bf16 has f32's range. Measured on an
# AMD EPYC (Zen 4, AVX512-BF16), SD's decoder at 512²: torch 18.6 s, f32 12.6 s, bf16 6.8 s at
# 47 dB to torch's picture (bench/sdxl.py has 1024²).
DECODER_IR = "vae_decoder.xml"
ENCODER_IR = "vae_encoder.xml"
COMPONENT = "vae"


# ldm's `ddconfig` of SD1.x/SD2.x's AutoencoderKL (83.7 M parameters).
SD_DDCONFIG = dict(
    double_z=True,
    z_channels=4,
    resolution=256,
    in_channels=3,
    out_ch=3,
    ch=128,
    ch_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_resolutions=[],
    dropout=0.0,
)


class AutoencoderParts(torch.nn.Module):
    """ldm's AutoencoderKL's modules and its decode, without its Lightning base class: what the
    demo, the bench and the tests build (with seeded random weights) in place of a checkpoint's."""

    def __init__(self, ddconfig: dict, seed: int | None = 0) -> None:
        super().__init__()
        from ldm.modules.diffusionmodules.model import Decoder, Encoder

        if seed is not None:  # None: no reseeding of the host's global generator
            torch.manual_seed(seed)
        channels = 2 * ddconfig["z_channels"]
        self.encoder, self.decoder = Encoder(**ddconfig), Decoder(**ddconfig)
        self.quant_conv = torch.nn.Conv2d(channels, channels, 1)
        self.post_quant_conv = torch.nn.Conv2d(channels // 2, channels // 2, 1)
        self.eval()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor):
        """ldm's AutoencoderKL.encode: the posterior the webui samples img2img's latent from."""
        from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(self.encode_moments(x))


def _sdpa_attnblock(self, x: torch.Tensor) -> torch.Tensor:
    """ldm's vanilla `AttnBlock` (one head over all pixels) as SDPA: traceable at any size, unlike
    the webui's chunked variants, whose chunking would be frozen into the graph."""
    h_ = self.norm(x)
    q, k, v = self.q(h_), self.k(h_), self.v(h_)
    b, c, h, w = q.shape
    q, k, v = (t.reshape(b, c, h * w).transpose(1, 2).unsqueeze(1) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b, c, h, w)
    return x + self.proj_out(out)


@contextlib.contextmanager
def traceable_vae() -> Iterator[None]:
    from ldm.modules.diffusionmodules import model as vae_model

    saved = vae_model.AttnBlock.__dict__.get("forward")
    vae_model.AttnBlock.forward = _sdpa_attnblock
    try:
        yield
    finally:
        vae_model.AttnBlock.forward = saved


def _convert(module: torch.nn.Module, example: torch.Tensor, name: str, channels: int) -> ov.Model:
    with torch.no_grad(), traceable_vae(), zero_padding(module):
        model = trace_to_openvino(module, (example,))
    model.inputs[0].get_tensor().set_names({name})
    model.outputs[0].get_tensor().set_names({"out"})
    model.reshape({name: ov.PartialShape([-1, channels, -1, -1])})
    return model


def export_vae(vae: torch.nn.Module, folder: Path, progress: ProgressFn = silent) -> dict:
    """Write the decoder and encoder IRs into `folder`; returns the manifest's fields."""
    started = time.perf_counter()
    if next(vae.parameters()).dtype != torch.float32:  # f16 in the webui: export a f32 copy, leave its own
        vae = copy.deepcopy(vae).float()
    latent_channels = vae.post_quant_conv.in_channels
    progress("tracing the VAE decoder", 0.0)
    gen = torch.Generator().manual_seed(0)
    # The modules themselves, not vae.decode/encode: a host may have replaced those on the instance.
    decode = torch.nn.Sequential(vae.post_quant_conv, vae.decoder)
    z = torch.randn(1, latent_channels, 8, 12, generator=gen)
    save_ir(_convert(decode, z, "z", latent_channels), folder / DECODER_IR)
    progress("tracing the VAE encoder", 0.5)
    encode = torch.nn.Sequential(vae.encoder, vae.quant_conv)
    save_ir(_convert(encode, torch.randn(1, 3, 64, 96, generator=gen), "x", 3), folder / ENCODER_IR)
    progress("VAE exported", 1.0)
    return {
        "models": {"decoder": DECODER_IR, "encoder": ENCODER_IR},
        "timings": {"export_s": time.perf_counter() - started},
    }


def prepare_vae_entry(
    vae: torch.nn.Module | Callable[[], torch.nn.Module],
    cache_root: str | Path,
    name: str,
    vae_hash: str,
    progress: ProgressFn = silent,
) -> cache.CacheEntry:
    """The cache entry of this VAE (`vae_hash` names its weights), exported when absent. `vae` may
    be a function making the module (a host whose VAE class is not ldm's: built from the file
    only when an export runs)."""
    key = cache.EntryKey(name, vae_hash, Recipe(), component=COMPONENT)

    def write(folder: Path) -> dict:
        return export_vae(vae if isinstance(vae, torch.nn.Module) else vae(), folder, progress)

    return cache.find_or_write(Path(cache_root), key, write, DECODER_IR, "VAE", progress)


CHECKPOINT_VAE_PREFIX = "first_stage_model."


def vae_from_checkpoint(path: str | Path) -> AutoencoderParts:
    """The checkpoint's VAE (ldm's key layout, `first_stage_model.*`) as ldm's modules in FP32, its
    ddconfig read off the weights' shapes (SD1, SD2 and SDXL share the layout)."""
    from ..graphs.ldm_unet import read_checkpoint

    state = {
        k[len(CHECKPOINT_VAE_PREFIX) :]: v
        for k, v in read_checkpoint(path).items()
        if k.startswith(CHECKPOINT_VAE_PREFIX) and not k.startswith(CHECKPOINT_VAE_PREFIX + "loss")
    }
    if "post_quant_conv.weight" not in state:
        raise UnsupportedModelError(
            f"{Path(path).name} holds no VAE in ldm's layout ({CHECKPOINT_VAE_PREFIX}*)"
        )
    ch = int(state["encoder.conv_in.weight"].shape[0])
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")})
    mult = [int(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) // ch for i in levels]
    blocks = len({k.split(".")[4] for k in state if k.startswith("encoder.down.0.block.")})
    z_channels = int(state["post_quant_conv.weight"].shape[0])
    ddconfig = dict(SD_DDCONFIG, ch=ch, ch_mult=mult, num_res_blocks=blocks, z_channels=z_channels)
    with torch.device("meta"):
        vae = AutoencoderParts(ddconfig, seed=None)
    vae.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return vae.eval()


def image_output(model: ov.Model) -> ov.Model:
    """The decoder with its output as the picture: u8, NHWC, `255 * clamp((x + 1) / 2, 0, 1)`
    truncated as the webui's `astype(np.uint8)` does."""
    ppp = ov.preprocess.PrePostProcessor(model)
    out = ppp.output()
    out.model().set_layout(ov.Layout("NCHW"))
    out.tensor().set_layout(ov.Layout("NHWC")).set_element_type(ov.Type.u8)

    def to_pixels(node):
        scaled = ops.multiply(ops.add(node, np.float32(1.0)), np.float32(127.5))
        return ops.floor(ops.clamp(scaled, 0.0, 255.0)).output(0)  # floor: Convert alone would round

    out.postprocess().custom(to_pixels)
    return ppp.build()


def vae_precision(device: str = "CPU", choice: str = "auto") -> str:
    """The precision the VAE compiles at on `device` for the user's `choice` (VAE_PRECISIONS):
    bf16 only on a CPU (other devices and AUTO/HETERO run f32), by "auto" only where it pays."""
    if choice not in VAE_PRECISIONS:
        raise ValueError(f"VAE precision {choice!r}: one of {', '.join(VAE_PRECISIONS)}")
    if choice == "f32" or device_kind(device) != "CPU":
        return "f32"
    if choice == "bf16":
        return "bf16"
    from .cpu_caps import cpu_caps

    return "bf16" if cpu_caps().bf16_native else "f32"


class OVVae(EntryPart):
    """The VAE of one cache entry on a device; each model (decoder, encoder, the decoder with
    pixels out) compiles at its first use."""

    what = "VAE"

    def __init__(
        self, entry: cache.CacheEntry, *args, decoder_entry: cache.CacheEntry | None = None, **kwargs
    ):
        """`decoder_entry`: an INT8 decoder (`vae_int8`) decodes in place of the entry's own, and
        its INT8 encoder, when it has one, encodes."""
        self.decoder_entry = decoder_entry
        super().__init__(entry, *args, **kwargs)

    def _opened(self) -> None:
        self._compiled: dict[str, ov.CompiledModel] = {}
        self.fell_back: str | None = None

    @property
    def decoder_int8(self) -> bool:
        return self.decoder_entry is not None

    @property
    def encoder_int8(self) -> bool:
        """The INT8 entry has an encoder too (made when Optimize had the host's pictures)."""
        return self.decoder_entry is not None and "encoder" in self.decoder_entry.manifest.models

    def _ir(self, which: str) -> Path:
        if which == "encoder":
            return (self.decoder_entry if self.encoder_int8 else self.entry).ir_path("encoder")
        return (self.decoder_entry or self.entry).ir_path("decoder")

    def _model(self, which: str) -> ov.CompiledModel:
        if which not in self._compiled:
            ir = self._ir(which)
            model = self.core.read_model(str(ir))
            if which == "image":
                model = image_output(model)
            self._compiled[which] = self.compile(model, ir, f"VAE {which}")
        return self._compiled[which]

    def _run(self, which: str, value: torch.Tensor) -> np.ndarray:
        array = np.ascontiguousarray(value.detach().to("cpu", torch.float32).numpy())
        out = self._infer(which, array)
        if self.precision != "f32" and which != "image" and not np.isfinite(out).all():
            # Not expected at bf16 (f32's range), but a NaN picture must not reach the user: this
            # model runs f32 from now on, and the host can say so (`fell_back`).
            self.fell_back = f"{self.precision} gave NaN/inf, f32 from then on"
            self.precision = "f32"
            self.properties = compile_properties(self.device, "f32", self.blob_dir)
            self.drop_compiled()
            out = self._infer(which, array)
        return out

    def _infer(self, which: str, array: np.ndarray) -> np.ndarray:
        compiled = self._model(which)
        with self.pages_given_back(self._ir(which)):  # pages a new shape reads (see runtime.py)
            # a request per call: no reuse of outputs
            return compiled.create_infer_request().infer({0: array})[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """What `first_stage_model.decode(z)` returns, on OpenVINO."""
        return torch.from_numpy(self._run("decoder", z)).to(device=z.device, dtype=z.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The moments (mean, logvar) `first_stage_model.encode` wraps into its distribution."""
        return torch.from_numpy(self._run("encoder", x)).to(device=x.device, dtype=x.dtype)

    def decode_to_pixels(self, z: torch.Tensor) -> np.ndarray:
        """The picture(s) as uint8 [B, H, W, 3], made inside the graph."""
        return self._run("image", z)

    def compiled_models(self) -> list[ov.CompiledModel]:
        return list(self._compiled.values())

    def drop_compiled(self) -> None:
        self._compiled.clear()
