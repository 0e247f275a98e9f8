"""Stand-in of extensions-builtin/Lora/networks.py (v1.10): the list of networks loaded for the
current job, which the webui fills from the prompt's <lora:name:weight> before sampling."""

loaded_networks = []
