"""What ran in one job: a record made at the start of each batch, counting the UNet calls
OpenVINO served and the ones torch served, with why. The infotext is written from it alone, so a
job that torch made is never labelled OpenVINO because an earlier job was.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

REASON_CHARS = 120


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


@dataclass
class JobRecord:
    summary: str = ""  # what OpenVINO ran, e.g. "fp32, CPU, f32, static"
    unavailable: str | None = None  # why OpenVINO could not serve this job at all
    openvino_calls: int = 0
    torch_calls: Counter[str] = field(default_factory=Counter)  # reason → calls
    notes: list[str] = field(default_factory=list)
    lora: str = ""  # the UNet LoRAs OpenVINO applied, "name:weight, ..."
    preset: str = ""  # the preset this job ran as it was made (recipe and DeepCache schedule)
    controlnet: str = ""  # how ControlNet's units ran with the OpenVINO UNet
    unet_s: float = 0.0  # seconds inside the OpenVINO UNet's calls
    sampling_span: tuple[float, float] | None = None  # perf_counter at the first call, after the last

    def served(self, started: float, ended: float) -> None:
        """One UNet call OpenVINO made, from `started` to `ended` (perf_counter)."""
        self.openvino_calls += 1
        self.unet_s += ended - started
        first = self.sampling_span[0] if self.sampling_span else started
        self.sampling_span = (first, ended)

    def seconds(self) -> str:
        """Where the sampler's seconds went, for the console: `sampling 17.1 s (UNet 15.9 s in 27
        calls)`, the difference being the sampler's own; empty when OpenVINO made no call."""
        if self.sampling_span is None:
            return ""
        span = self.sampling_span[1] - self.sampling_span[0]
        return f"sampling {span:.1f} s (UNet {self.unet_s:.1f} s in {self.openvino_calls} calls)"

    def fell_back(self, reason: str) -> bool:
        """Count one torch call; True the first time this reason appears (tell the user once)."""
        reason = _short(reason)
        first = reason not in self.torch_calls
        self.torch_calls[reason] += 1
        return first

    def note(self, text: str) -> None:
        if _short(text) not in self.notes:
            self.notes.append(_short(text))

    @property
    def calls(self) -> int:
        return self.openvino_calls + sum(self.torch_calls.values())

    def infotext(self) -> str:
        """`fp32, CPU, f32, static` / `partly (12/20 calls; 8 on torch: why)` / `off (why)`."""
        on_torch = sum(self.torch_calls.values())
        reasons = "; ".join(self.torch_calls) or self.unavailable or "no UNet call reached OpenVINO"
        if self.openvino_calls == 0:
            return f"off ({self.unavailable or reasons})"
        if on_torch == 0:
            return self.summary
        share = f"{self.openvino_calls}/{self.calls} calls; {on_torch} on torch: {reasons}"
        return f"partly ({share}); {self.summary}"
