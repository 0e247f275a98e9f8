"""Devices found at run time, clear errors for absent ones, and the CPU ISA guard."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from sd_ov.errors import DeviceNotFoundError
from sd_ov.runtime import ov_core
from sd_ov.serve import engine


def absent_device() -> str:
    present = ov_core.available_devices()
    return next(d for d in ("NPU", "GPU", "GPU.3") if d not in present and d.split(".")[0] not in present)


def test_cpu_is_found_with_its_full_name():
    assert "CPU" in ov_core.available_devices()
    choices = ov_core.device_choices()
    assert "AUTO" in choices and choices.index("AUTO") == len(ov_core.available_devices())
    cpu_name = ov_core.get_core().get_property("CPU", "FULL_DEVICE_NAME")
    assert f"CPU: {cpu_name}" in ov_core.describe_devices()


def test_per_device_defaults():
    """auto precision: f32 on CPU (OpenVINO's own default there is bf16 on AMX CPUs), f16 on GPU
    and NPU; NPU takes static shapes only, also behind HETERO; AUTO keeps each device's own."""
    from sd_ov.runtime.settings import RuntimeSettings

    cases = {
        "CPU": ("f32", "dynamic"),
        "GPU.1": ("f16", "dynamic"),
        "NPU": ("f16", "static"),
        "HETERO:NPU,CPU": ("auto", "static"),
        "AUTO": ("auto", "dynamic"),
    }
    for device, expected in cases.items():
        settings = RuntimeSettings(device=device, precision="auto", shape_policy="dynamic").for_device()
        assert (settings.precision, settings.shape_policy) == expected, device
    assert RuntimeSettings(device="GPU", precision="f32").for_device().precision == "f32"  # a choice stays
    assert ov_core.compile_properties("CPU", "auto")["INFERENCE_PRECISION_HINT"] == "f32"
    assert "INFERENCE_PRECISION_HINT" not in ov_core.compile_properties("AUTO", "auto")


def test_absent_device_names_the_devices_that_exist():
    missing = absent_device()
    with pytest.raises(DeviceNotFoundError) as err:
        ov_core.resolve_device(missing)
    assert missing in str(err.value)
    assert "available devices: " in str(err.value) and "CPU" in str(err.value)


def test_absent_device_inside_auto_or_hetero_is_named_too():
    missing = absent_device()
    assert ov_core.resolve_device("auto:cpu") == "AUTO:CPU"
    with pytest.raises(DeviceNotFoundError, match=missing):
        ov_core.resolve_device(f"HETERO:{missing},CPU")


def test_runtime_refuses_an_absent_device(tiny_entry):
    with pytest.raises(DeviceNotFoundError, match="CPU"):
        engine.open_unet(tiny_entry, device=absent_device())


def test_compile_properties():
    props = ov_core.compile_properties("CPU", "f32", "/tmp/blobs")
    expected = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "CACHE_DIR": "/tmp/blobs"}
    assert props == expected
    assert ov_core.compile_properties("CPU", "auto")["INFERENCE_PRECISION_HINT"] == "f32"  # not bf16 on AMX
    assert "INFERENCE_PRECISION_HINT" not in ov_core.compile_properties("AUTO", "bf16")


def test_a_users_isa_cap_wins(monkeypatch):
    monkeypatch.setenv(ov_core.ISA_ENV, "AVX2")
    monkeypatch.setattr(ov_core, "safe_cpu_isa", lambda: pytest.fail("probed despite the user's cap"))
    assert ov_core.guard_cpu_isa() == "AVX2"


def test_bf16_and_int8_run_in_process_after_the_guard():
    """On CPUs that claim AMX but trap on it, this test would die with SIGILL without the guard."""
    core = ov_core.get_core()
    a = ops.parameter([16, 16], np.float32)
    w = ops.constant(np.eye(16, dtype=np.float32))
    out = core.compile_model(
        ov.Model([ops.matmul(a, w, False, False)], [a]), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"}
    )(np.ones((16, 16), np.float32))[0]
    assert np.allclose(out, 1.0)
    x = ops.parameter([1, 16, 4, 4], np.float32)
    lo, hi = ops.constant(np.float32(-2.0)), ops.constant(np.float32(2.0))
    weights = ops.constant(np.ones((16, 16, 1, 1), np.float32) / 16)
    wq = ops.fake_quantize(
        weights,
        ops.constant(np.float32(-1)),
        ops.constant(np.float32(1)),
        ops.constant(np.float32(-1)),
        ops.constant(np.float32(1)),
        255,
    )
    y = ops.convolution(ops.fake_quantize(x, lo, hi, lo, hi, 256), wq, [1, 1], [0, 0], [0, 0], [1, 1])
    res = core.compile_model(ov.Model([y], [x]), "CPU")(np.full((1, 16, 4, 4), 0.5, np.float32))[0]
    assert np.allclose(res, 0.5, atol=0.05)
