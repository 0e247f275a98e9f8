"""The engine's choices as plain values: what the adapter's settings, the Optimize form and the
command line offer. Imports nothing, so the webui's Settings page and a form can be built without
loading torch, OpenVINO or NNCF."""

from __future__ import annotations

# How a compiled UNet takes picture sizes (runtime.py says what each costs).
SHAPE_POLICIES = ("static", "dynamic")
DEFAULT_SHAPE_POLICY = "dynamic"
# Inference precision hints; "auto" is sd-ov's per-device default (ov_core.DEFAULT_PRECISION).
PRECISIONS = ("f32", "bf16", "f16", "auto")
# Optimize's INT8 modes (compress.py) and pruning modes (prune.py).
INT8_MODES = ("off", "weights", "hybrid", "hybrid-ff", "full")
PRUNE_MODES = ("off", "magnitude", "ffn")
# Token merging: at most the three sources of every 2x2 window merge away.
MAX_TOME_RATIO = 0.75
# DeepCache's schedules of full calls (deepcache.py), and its skip branches: an SD UNet has 12
# input blocks; the export checks the real count.
SCHEDULES = ("uniform", "non-uniform")
MAX_DEEPCACHE_BRANCH = 10
# The cached deep feature: the full model's second output, the shallow model's last input.
DEEPCACHE_FEATURE = "feature"
# Where a single-file checkpoint keeps the UNet's weights.
CHECKPOINT_UNET_PREFIX = "model.diffusion_model."

# The VAE's precision choices (`vae.vae_precision` says what each means on a device).
VAE_PRECISIONS = ("auto", "f32", "bf16")
