"""sd-ov: run Stable Diffusion's UNet through OpenVINO.

The package is importable without the webui; `scripts/` adapts it to AUTOMATIC1111's webui.
"""

__version__ = "0.1.0"
