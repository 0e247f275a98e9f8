"""sd-ov: run Stable Diffusion's UNet through OpenVINO.

The package is importable without the webui; `sd_ov_webui/` adapts it to AUTOMATIC1111's webui.
Importing it turns OpenVINO's and NNCF's telemetry off for this process (see `privacy`).
"""

from .privacy import telemetry_off

__version__ = "0.1.0"

telemetry_off()
