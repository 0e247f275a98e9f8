"""What a host calls per job: the engine (a cached entry, or an export), the served UNet (plain,
DeepCache, LoRA, ControlNet), the torch UNet it serves for, the presets a job can run as, and the
job's record (what ran, what torch made and why).

Imports: `runtime`, `graphs`, `store` and the top-level modules.
"""
