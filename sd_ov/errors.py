"""Errors the engine raises; each carries a message meant for the person at the keyboard."""


class SdOvError(RuntimeError):
    """Base of every error sd-ov raises on purpose."""


class DeviceNotFoundError(SdOvError):
    """The requested OpenVINO device is not present on this machine."""


class UnsupportedModelError(SdOvError):
    """The UNet is not one the exporter knows (e.g. SD3's MMDiT, a label-conditioned UNet)."""


class UnsupportedCallError(SdOvError):
    """A forward call the compiled UNet cannot serve (extra conditioning, wrong channels)."""


class ExportError(SdOvError):
    """Conversion or saving of the IR failed; no cache entry was written."""


class CacheEntryInvalid(SdOvError):
    """A cache entry on disk does not match its manifest or the expected recipe."""


class Cancelled(SdOvError):
    """Long work was cancelled by the user; nothing partial was kept."""


class NonFiniteOutputError(SdOvError):
    """The compiled UNet returned NaN or inf (a precision the device runs badly, a broken driver):
    its output must never reach the sampler."""


class CacheEntryInUse(SdOvError):
    """A cache entry cannot be replaced because a compiled model still maps its files (Windows)."""
