"""What this CPU really runs fast, measured once: OpenVINO's claimed capabilities are not enough.

On sd-ov's VM of 2026-11 the CPU plugin reported BF16 (AMX), yet SD1.5 ran 3x slower at bf16 than
at f32. So bf16 counts as native only where a UNet-shaped convolution and MatMul run faster at
bf16 than at f32 here, side by side in one child process (so a trap cannot take the caller down,
and the ISA guard's cap applies). The verdict is cached with the ISA probe's fingerprint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

from .ov_core import _machine_fingerprint, _probe_cache_file, get_core

# bf16 is used only when it is at least this much faster than f32 (noise on a shared VM is ~10 %).
MIN_BF16_SPEEDUP = 1.15

_TIMING = r"""
import json, time
import numpy as np, openvino as ov, openvino.opset13 as ops
core = ov.Core()
rng = np.random.default_rng(0)
# A ResBlock's 3x3 convolution and an attention projection at SD1.5's 64x64 latent, batch 2.
x = ops.parameter([2, 320, 64, 64], np.float32)
w = ops.constant(rng.standard_normal((320, 320, 3, 3)).astype(np.float32) * 0.02)
y = ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
t = ops.reshape(y, ops.constant(np.array([2, 320, -1], np.int64)), False)
p = ops.constant(rng.standard_normal((320, 320)).astype(np.float32) * 0.05)
z = ops.matmul(t, p, True, False)
model = ov.Model([z], [x])
data = rng.standard_normal((2, 320, 64, 64)).astype(np.float32)
best = {}
for precision in ("f32", "bf16"):
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                 "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    request.infer({0: data})
    times = []
    for _ in range(5):
        started = time.perf_counter()
        request.infer({0: data})
        times.append(time.perf_counter() - started)
    best[precision] = min(times)
print(json.dumps(best))
"""


@dataclass(frozen=True)
class CpuCaps:
    """`claimed`: OpenVINO's OPTIMIZATION_CAPABILITIES of the CPU; `bf16_speedup`: f32 time ÷
    bf16 time on the UNet-shaped layers (0 when bf16 is not claimed or the timing failed)."""

    claimed: tuple[str, ...]
    bf16_speedup: float

    @property
    def bf16_native(self) -> bool:
        return "BF16" in self.claimed and self.bf16_speedup >= MIN_BF16_SPEEDUP


def _measure_bf16_speedup() -> float:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _TIMING], capture_output=True, text=True, timeout=300, env=dict(os.environ)
        )
        times = json.loads(done.stdout.strip().splitlines()[-1])
        return float(times["f32"]) / float(times["bf16"])
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, IndexError, ZeroDivisionError):
        return 0.0


def cpu_caps() -> CpuCaps:
    """This CPU's capabilities, measured once per machine, kernel and OpenVINO version (a job that
    asks for bf16 reads the verdict from the file)."""
    cache = _probe_cache_file().with_name("cpu_caps.json")
    fingerprint = _machine_fingerprint() + os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    try:
        cached = json.loads(cache.read_text())
        if cached.get("fingerprint") == fingerprint:
            return CpuCaps(tuple(cached["claimed"]), float(cached["bf16_speedup"]))
    except (OSError, ValueError, KeyError):
        pass
    claimed = tuple(sorted(str(c) for c in get_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
    caps = CpuCaps(claimed, _measure_bf16_speedup() if "BF16" in claimed else 0.0)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, **asdict(caps)}))
        os.replace(tmp, cache)
    except OSError:
        pass
    return caps
