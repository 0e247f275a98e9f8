"""sd-ov's webui adapter: everything that speaks AUTOMATIC1111's extension API.

`scripts/openvino_unet.py` only registers callbacks and the Script; the work is here, thin over
the `sd_ov` engine (which never imports the webui). Modules in a package keep their classes'
identity across the webui's "Reload UI", which re-executes scripts but not packages.
"""
