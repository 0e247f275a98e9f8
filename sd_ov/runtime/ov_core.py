"""One OpenVINO Core per process, devices found at run time, and a guard for CPUs that lie.

Why a guard: some virtual machines report AMX in CPUID (and even enable it in XCR0) but trap
on its instructions. OpenVINO's CPU plugin then dies with SIGILL on its first bf16 or INT8
kernel, which would take the whole webui down. Before the CPU plugin is loaded we run a tiny
bf16 and INT8 model in a child process; if it dies, we cap oneDNN's instruction set
(`ONEDNN_MAX_CPU_ISA`, read by the CPU plugin when it loads) at the best level that works.
The verdict is cached per CPU, kernel and OpenVINO version, so it costs one child process once.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import openvino as ov

from ..errors import DeviceNotFoundError

ISA_ENV = "ONEDNN_MAX_CPU_ISA"
# Tried from best to most conservative; None means "no cap".
ISA_CANDIDATES: tuple[str | None, ...] = (None, "AVX512_CORE_BF16", "AVX512_CORE_VNNI", "AVX2_VNNI", "AVX2")
VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI")

_core: ov.Core | None = None
_core_lock = threading.Lock()

_PROBE = r"""
import numpy as np, openvino as ov, openvino.opset13 as ops
core = ov.Core()
# bf16 matmul: runs on AMX-BF16 where the CPU claims it.
a = ops.parameter([64, 64], np.float32)
w = ops.constant(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
m = ov.Model([ops.matmul(a, w, False, False)], [a])
core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})(np.ones((64, 64), np.float32))
# INT8 convolution (FakeQuantize on data and weights): runs on AMX-INT8 where claimed.
x = ops.parameter([1, 64, 8, 8], np.float32)
lo, hi = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
xq = ops.fake_quantize(x, lo, hi, lo, hi, 256)
wk = ops.constant(np.random.default_rng(1).standard_normal((64, 64, 3, 3)).astype(np.float32))
wl, wh = ops.constant(np.float32(-3.0)), ops.constant(np.float32(3.0))
wq = ops.fake_quantize(wk, wl, wh, wl, wh, 255)
y = ops.convolution(xq, wq, [1, 1], [1, 1], [1, 1], [1, 1])
core.compile_model(ov.Model([y], [x]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(
    np.ones((1, 64, 8, 8), np.float32))
print("ok")
"""


def _probe_cache_file() -> Path:
    """Per-user, per-machine verdicts: %LOCALAPPDATA% on Windows (not roamed), XDG elsewhere."""
    default = os.environ.get("LOCALAPPDATA") if sys.platform == "win32" else None
    root = Path(os.environ.get("XDG_CACHE_HOME") or default or Path.home() / ".cache") / "sd_ov"
    return root / "cpu_isa.json"


def _machine_fingerprint() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    cpu += line
                if line.startswith("flags"):
                    break
    except OSError:
        cpu = platform.processor()
    text = "|".join([cpu, platform.release(), ov.__version__, sys.platform])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _probe_ok(isa: str | None) -> bool:
    env = dict(os.environ)
    env.pop(ISA_ENV, None)
    if isa:
        env[ISA_ENV] = isa
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "ok" in done.stdout


def safe_cpu_isa() -> str | None:
    """The oneDNN ISA cap this machine needs, or None when everything the CPU claims works."""
    fingerprint = _machine_fingerprint()
    cache = _probe_cache_file()
    try:
        cached = json.loads(cache.read_text())
        if cached.get("fingerprint") == fingerprint:
            return cached.get("isa")
    except (OSError, ValueError):
        pass
    chosen: str | None = "AVX2"
    for isa in ISA_CANDIDATES:
        if _probe_ok(isa):
            chosen = isa
            break
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "isa": chosen}))
        os.replace(tmp, cache)
    except OSError:
        pass
    return chosen


def guard_cpu_isa() -> str | None:
    """Cap oneDNN's ISA if this CPU traps on what it claims; a user's own cap always wins."""
    if ISA_ENV in os.environ:
        return os.environ[ISA_ENV]
    if platform.machine().lower() not in ("x86_64", "amd64") or os.environ.get("SD_OV_SKIP_ISA_PROBE"):
        return None
    isa = safe_cpu_isa()
    if isa:
        os.environ[ISA_ENV] = isa
    return isa


def get_core() -> ov.Core:
    """The process-wide Core; the ISA guard runs before any plugin is loaded."""
    global _core
    with _core_lock:
        if _core is None:
            guard_cpu_isa()
            _core = ov.Core()
        return _core


def available_devices() -> list[str]:
    """Physical devices OpenVINO sees here (CPU, GPU, GPU.1, NPU, ...)."""
    return list(get_core().available_devices)


def device_choices() -> list[str]:
    """What a user may pick: the physical devices, then AUTO (which picks among them), and
    HETERO:GPU,CPU where a GPU exists (layers the GPU plugin cannot run go to the CPU)."""
    present = available_devices()
    hetero = [f"HETERO:{d},CPU" for d in present if d.startswith("GPU")][:1]
    return present + ["AUTO"] + hetero


def describe_devices() -> str:
    """`CPU: <full name>; GPU: <full name>` for the devices found, for a settings hint."""
    return "; ".join(f"{d}: {device_full_name(d)}" for d in available_devices())


# Per-device defaults of the UNet (the "auto" precision, the shapes a device can take).
# CPU: f32. OpenVINO's own CPU default is bf16 wherever the CPU has AVX512-BF16/AMX; measured on
# a Xeon with AMX (sd-ov's VM of 2026-11) SD1.5 ran 3x slower than f32 and produced NaN, so bf16
# is an explicit choice, never a default. GPU: f16 (what Intel GPUs run natively); the VAE and
# text encoder stay f32 everywhere. NPU: f16 and static shapes only (its compiler takes no
# dynamic dimensions).
DEFAULT_PRECISION = {"CPU": "f32", "GPU": "f16", "NPU": "f16"}
STATIC_ONLY = ("NPU",)


def device_kind(device: str) -> str:
    """`GPU.1` → GPU, `HETERO:GPU,CPU` → HETERO: the plugin a device string names."""
    return device.split(":")[0].split(".")[0].upper()


def default_precision(device: str) -> str:
    """The precision "auto" means on `device` ("auto" again for AUTO/HETERO: each device its own)."""
    return DEFAULT_PRECISION.get(device_kind(device), "auto")


def needs_static_shapes(device: str) -> bool:
    name = device.upper()
    head, _, tail = name.partition(":")
    if head in VIRTUAL_DEVICES:  # HETERO/AUTO over an NPU: its part must be static too
        return any(d.strip().split(".")[0] in STATIC_ONLY for d in tail.split(","))
    return head.split(".")[0] in STATIC_ONLY


def device_full_name(device: str) -> str:
    try:
        return str(get_core().get_property(device, "FULL_DEVICE_NAME"))
    except Exception:  # virtual devices have no full name
        return device


def resolve_device(requested: str) -> str:
    """Check that `requested` (CPU, GPU.1, AUTO, AUTO:GPU,CPU, HETERO:GPU,CPU) can run here.

    Raises DeviceNotFoundError naming the devices that do exist, so the UI can say it plainly.
    """
    name = (requested or "CPU").strip().upper()
    present = available_devices()
    head, _, tail = name.partition(":")
    wanted = [d.strip() for d in tail.split(",") if d.strip()] if head in VIRTUAL_DEVICES else [name]
    if head in VIRTUAL_DEVICES and not wanted:
        return head
    missing = [d for d in wanted if not any(p == d or p.split(".")[0] == d for p in present)]
    if missing:
        raise DeviceNotFoundError(
            f"OpenVINO device {', '.join(missing)} is not available on this machine; "
            f"available devices: {', '.join(present) or 'none'} (or AUTO)."
        )
    return name


def compile_properties(
    device: str, precision: str = "f32", cache_dir: str | os.PathLike | None = None
) -> dict[str, str]:
    """Compile properties: latency hint (one picture at a time), precision, blob cache.

    precision: "f32", "f16", "bf16", or "auto" for the device's default (`default_precision`).
    """
    props: dict[str, str] = {"PERFORMANCE_HINT": "LATENCY"}
    physical = device.split(":")[0] not in VIRTUAL_DEVICES
    if precision == "auto":  # sd-ov's per-device default, not OpenVINO's (bf16 on AMX CPUs)
        precision = default_precision(device)
    if physical and precision and precision != "auto":
        props["INFERENCE_PRECISION_HINT"] = precision
    if cache_dir:
        props["CACHE_DIR"] = str(cache_dir)
    return props
