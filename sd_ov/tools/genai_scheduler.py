"""The `scheduler/` of a GenAI folder: the GenAI scheduler that reproduces the webui's sampler.

The webui's samplers run on SD's training noise schedule (betas scaled-linear 0.00085 → 0.012):
- **Euler** (k-diffusion's, evenly spaced timesteps from 999 to 0) is GenAI's
  `EulerDiscreteScheduler` with `timestep_spacing: linspace`;
- **Euler a** is `EulerAncestralDiscreteScheduler`, linspace; its per-step noise comes from the
  same generator after the first noise in both (the webui's CPU RNG, GenAI's `TorchGenerator`);
- **DDIM** (A1111's timestep sampler: timesteps `0, k, 2k, ... + 1`, eta 0) is `DDIMScheduler`
  with `leading` spacing, `steps_offset` 1 and `set_alpha_to_one` false: the same steps, and one
  more from t=1 to `alphas_cumprod[0]` that A1111's stops before (a change below 8-bit pixels:
  60 dB apart on the tests' model).
For those, where the step count divides 999 (or 1000 for DDIM) the timesteps are the same exactly;
elsewhere GenAI rounds each timestep to an integer. **LCM** is `LCMScheduler`: GenAI's LCM picks
its timesteps from LCM's 50-step origin schedule, not the webui's evenly spaced ones — close,
not the same picture. Other samplers (DPM++, UniPC, ...) have no GenAI scheduler: Euler is
written and the note says so.
"""

from __future__ import annotations

from typing import Any

TRAINING_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
}
SCHEDULERS: dict[str, dict[str, Any]] = {
    "Euler": {
        "_class_name": "EulerDiscreteScheduler",
        "timestep_spacing": "linspace",
        "interpolation_type": "linear",
        "final_sigmas_type": "zero",
        "steps_offset": 1,
        "use_karras_sigmas": False,
    },
    "Euler a": {
        "_class_name": "EulerAncestralDiscreteScheduler",
        "timestep_spacing": "linspace",
        "steps_offset": 1,
    },
    "DDIM": {
        "_class_name": "DDIMScheduler",
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "clip_sample": False,
    },
    "LCM": {
        "_class_name": "LCMScheduler",
        "original_inference_steps": 50,
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "set_alpha_to_one": True,
        "clip_sample": False,
        "timestep_scaling": 10.0,
    },
}
SAMPLERS = GENAI_SAMPLERS = tuple(SCHEDULERS)  # the webui samplers GenAI has a scheduler for


def scheduler_config(
    sampler: str | None, prediction_type: str = "epsilon"
) -> tuple[dict[str, Any], str | None]:
    """(scheduler_config.json for the webui's `sampler`, a note where GenAI's differs or has none)."""
    name = sampler or "Euler"
    note = None
    if name not in SCHEDULERS:
        note = f"{name} has no OpenVINO GenAI scheduler: Euler was written (GenAI has {', '.join(SAMPLERS)})"
        name = "Euler"
    elif name == "LCM":
        note = (
            "GenAI's LCM takes its timesteps from LCM's 50-step schedule: close to the webui's LCM, not equal"
        )
    config = {**TRAINING_SCHEDULE, **SCHEDULERS[name], "prediction_type": prediction_type}
    return config, note
