"""sd-webui-controlnet's jobs on the OpenVINO UNet.

The extension replaces the UNet instance's forward (its scripts/hook.py, `UnetHook.hook`): per
call it runs each unit's control model, weighs and sums their residuals, then runs the UNet's
blocks itself, adding them at the skip joins. Its calls never reach the SD Unet mechanism.

Everything in that forward that is ControlNet's stays its own: units, weights, start/end steps,
soft injection, hires hints, the inpaint and colour-fix post-processing. Only the UNet's part
moves: the forward runs with a stand-in for the UNet (`_UNetStandIn`) whose blocks compute
nothing. Each input block returns zeros of the real feature's shape, so ControlNet's own
`aligned_adding` leaves at each skip join exactly the residual it would add for torch (resized
and channel-aligned as it does), where the stand-in's output blocks read it off; the stand-in's
output layer then calls the OpenVINO UNet with those residuals as inputs
(`sd_ov.graphs.control_inputs`), and ControlNet's post-processing gets its output. The units' control
models run on OpenVINO too for the length of each call (control_model.py), or on torch.

Served only for unit types that add residuals and nothing else; reference-only, T2I adapters,
IP-Adapter, ControlLLLite, ... change torch's attention or blocks, so their jobs stay on torch,
with the reason in the infotext.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch

from sd_ov import feature_shapes

from .errors import explain
from .torch_unet import foreign_forward

# ControlModelType names (scripts/enums.py) whose units only add residuals at the skip joins.
# ControlLoRA's control model reads the torch UNet's weights (which are freed while OpenVINO
# serves); InstantID comes with an IP-Adapter unit, which patches attention.
SERVED_TYPES = ("ControlNet", "ControlNetUnion")


class TorchServes(Exception):
    """This call goes to torch (the reason is already recorded)."""


def controlnet_hook(unet: torch.nn.Module) -> Any | None:
    """The extension's `UnetHook` when its forward is installed on `unet` (ours over it too), or
    None. Found in the closure of the forward it installs (`forward_webui`, which holds `outer`)."""
    forward = vars(unet).get("forward")
    if isinstance(forward, ControlNetOnOpenVINO):
        forward = forward.hooked
    function = getattr(forward, "__func__", None)
    if function is None or function.__closure__ is None:
        return None
    try:
        outer = inspect.getclosurevars(function).nonlocals.get("outer")
    except (TypeError, ValueError):
        return None
    return outer if hasattr(outer, "control_params") and hasattr(outer, "restore") else None


def why_not_served(hook: Any) -> str | None:
    """None when every unit of the job only adds residuals; else why torch serves the job."""
    params = list(getattr(hook, "control_params", None) or [])
    if not params:
        return "ControlNet is hooked with no unit"
    kinds = [getattr(p.control_model_type, "name", str(p.control_model_type)) for p in params]
    others = sorted({kind for kind in kinds if kind not in SERVED_TYPES})
    if others:
        return (
            f"ControlNet units of type {', '.join(others)} change torch's attention or blocks "
            f"(served on OpenVINO: {', '.join(SERVED_TYPES)})"
        )
    if getattr(hook, "attn_module_list", None) or getattr(hook, "gn_module_list", None):
        return "ControlNet's reference / style-align hooks change torch's attention"
    return None


class Server(Protocol):
    """What serves ControlNet's calls (the adapter's OpenVINOUnet)."""

    def controlnet_reason(self) -> str | None:
        """Why torch serves the next call; None: OpenVINO does."""

    def serve_controlled(self, x, timesteps, context, y, residuals: list[torch.Tensor]) -> torch.Tensor:
        """The OpenVINO UNet's output, or TorchServes with the reason."""

    def control_models_served(self, params: list[Any]) -> AbstractContextManager[None]:
        """Around ControlNet's forward: the units' control models on OpenVINO where they can be."""

    def torch_serves(self, reason: str) -> None:
        """Record a torch call and make the torch UNet ready for it."""


def install(unet: torch.nn.Module, server: Server, hook: Any) -> None:
    """Put our forward over ControlNet's (ControlNet's `restore` removes both at the job's end)."""
    forward = vars(unet)["forward"]
    if isinstance(forward, ControlNetOnOpenVINO):
        forward.server, forward.hook = server, hook
    else:
        unet.forward = ControlNetOnOpenVINO(unet, forward, server, hook)


def uninstall(unet: torch.nn.Module) -> None:
    """ControlNet's own forward back (torch serves its calls)."""
    forward = vars(unet).get("forward")
    if isinstance(forward, ControlNetOnOpenVINO):
        unet.forward = forward.hooked


class ControlNetOnOpenVINO:
    """The UNet's forward while a ControlNet job is served: ControlNet's forward with the
    stand-in as its UNet; ControlNet's forward on the torch UNet when OpenVINO can't serve a call."""

    def __init__(self, unet: torch.nn.Module, hooked: Callable, server: Server, hook: Any) -> None:
        self.unet = unet
        self.hooked = hooked  # ControlNet's bound forward
        self.server = server
        self.hook = hook  # its UnetHook: the units' params

    def __call__(self, x, timesteps=None, context=None, y=None, **kwargs):
        reason = self.server.controlnet_reason()
        if reason is None:
            run = functools.partial(self.server.serve_controlled, timesteps=timesteps, y=y)
            params = list(getattr(self.hook, "control_params", None) or [])
            try:
                stand_in = _UNetStandIn(self.unet, run)
                with self.server.control_models_served(params):
                    return self.hooked.__func__(stand_in, x, timesteps, context, y, **kwargs)
            except TorchServes as err:
                reason = str(err)
        self.server.torch_serves(reason)
        return self.hooked(x, timesteps, context, y, **kwargs)


class _UNetStandIn:
    """The UNet as ControlNet's forward sees it while OpenVINO serves: blocks that compute
    nothing and record what ControlNet adds at each skip join; its `out` runs the OpenVINO UNet.
    Other attributes (model_channels, ...) are the real UNet's."""

    def __init__(self, unet: torch.nn.Module, run: Callable) -> None:
        self._unet = unet
        self._run = run  # (x=, context=, residuals=) → output
        n = len(unet.input_blocks)
        self._n = n
        self._shapes: list[tuple[int, int, int]] = []
        self._x: torch.Tensor | None = None
        self._context: torch.Tensor | None = None
        self._residuals: list[torch.Tensor | None] = [None] * (n + 1)
        self._joined = 0  # channels of the decoder's h at the next join
        self.input_blocks = [functools.partial(self._input_block, i) for i in range(n)]
        self.output_blocks = [
            functools.partial(self._output_block, j) for j in range(len(unet.output_blocks))
        ]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._unet, name)

    @staticmethod
    def time_embed(t_emb: torch.Tensor) -> torch.Tensor:
        return t_emb  # the OpenVINO UNet embeds the timesteps itself

    @staticmethod
    def label_emb(y: torch.Tensor) -> float:
        return 0.0

    def _zeros(self, x: torch.Tensor, channels: int, h: int, w: int) -> torch.Tensor:
        return x.new_zeros(()).expand(x.shape[0], channels, h, w)  # a view: no memory

    def _input_block(self, i: int, h: torch.Tensor, emb, context: torch.Tensor) -> torch.Tensor:
        if i == 0:  # what the UNet gets: after ControlNet's inpaint hijack and prompt tokens
            self._x, self._context = h, context
            self._shapes = feature_shapes(self._unet, h.shape[-2], h.shape[-1])
        return self._zeros(self._x, *self._shapes[i])

    def middle_block(self, h: torch.Tensor, emb, context) -> torch.Tensor:
        self._joined = self._shapes[-1][0]
        return self._zeros(self._x, *self._shapes[-1])

    def _output_block(self, j: int, h: torch.Tensor, emb, context) -> torch.Tensor:
        if j == 0:  # h = the middle block's output plus its residual
            self._residuals[self._n] = h[:, : self._joined]
        self._residuals[self._n - 1 - j] = h[:, self._joined :]
        self._joined = 1
        return self._zeros(self._x, 1, h.shape[-2], h.shape[-1])

    def out(self, h: torch.Tensor) -> torch.Tensor:
        if self._x is None or any(r is None for r in self._residuals):
            raise TorchServes("ControlNet's forward did not run the UNet's blocks as expected")
        return self._run(
            x=self._x, context=self._context, residuals=[r.contiguous() for r in self._residuals]
        )


def job_hook(unet: torch.nn.Module | None, record) -> Any:
    """sd-webui-controlnet's hook when this job's units can be served (else None, and the record
    says why torch serves the job); another extension's forward: torch, with a note."""
    if unet is None or not foreign_forward(unet):
        return None
    hook = controlnet_hook(unet)
    why = why_not_served(hook) if hook is not None else None
    if hook is None:
        record.unavailable = "another extension replaced the UNet's forward; torch served it"
    elif why:
        uninstall(unet)
        record.unavailable = f"{why}; torch served the job"
        return None
    return hook


def serve_units(unet: torch.nn.Module, served, record, hook, server: Server) -> bool:
    """This job's ControlNet units add their residuals into the OpenVINO UNet (opened with their
    inputs), or none come (opened without); True when the units are served."""
    try:
        served.set_control(hook is not None)
    except Exception as err:  # e.g. a graph without SD skip joins: this job is torch's
        uninstall(unet)
        record.unavailable = f"ControlNet on torch: {explain(err)}"
        return False
    if hook is None:
        return False
    install(unet, server, hook)
    kinds = sorted({p.control_model_type.name for p in hook.control_params})
    units = len(hook.control_params)
    plural = "s" if units > 1 else ""
    # job.py adds where the control models ran
    record.controlnet = f"{units} unit{plural} ({', '.join(kinds)}): residuals into the OpenVINO UNet"
    return True
