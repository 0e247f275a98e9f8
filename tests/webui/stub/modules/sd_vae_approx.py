"""modules/sd_vae_approx.py: the "Approx NN" live-preview decoder, which the webui downloads the
first time a model family needs it (vaeapprox-sdxl.pt for SDXL); on a machine without network that
download raises, and `process_images` loads it before sampling whenever live previews are on."""

from __future__ import annotations

import urllib.error

# False: the file is not on disk and the download fails (an offline machine)
downloadable = True


def model():
    if not downloadable:
        raise urllib.error.URLError("[Errno -2] Name or service not known")
