"""What the exporter, the runtime and a cache entry's manifest know of a UNet's interface.

A value of the store: a manifest records it, `graphs.ldm_unet.describe` reads it off a UNet."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class UNetSpec:
    """What the exporter and the runtime need to know about a UNet's interface."""

    in_channels: int
    out_channels: int
    context_dim: int
    model_channels: int
    parameters: int
    downsample: int  # the UNet's own downsampling: 2 ** (levels - 1)
    adm_channels: int = 0  # width of the vector conditioning `y` (SDXL: 2816); 0: none
    # What an exported IR takes: latent H and W multiples of this. 0 (entries exported before
    # the skip joins were traced with the webui's resize): multiples of `downsample` only.
    latent_multiple: int = 0

    @property
    def size_multiple(self) -> int:
        """Latent sides must be multiples of this for the IR (1: any size the webui makes)."""
        return self.latent_multiple or self.downsample

    def exported(self, tome: bool) -> UNetSpec:
        """The spec of an IR traced under `traceable`: its skip joins resize like the webui's,
        so any latent size runs; ToMe's 2x2 windows need even sides."""
        return replace(self, latent_multiple=2 if tome else 1)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
