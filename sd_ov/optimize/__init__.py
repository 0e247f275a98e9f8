"""Optimize: a recipe made from a checkpoint (calibration, INT8 compression, token merging,
pruning), measured against torch (speed, fidelity, memory), its DeepCache pair, the INT8 VAE
decoder, the form every interface parses, the report; and the small sampler and metrics that
calibration and measurement use.

Imports: `serve`, `runtime`, `graphs`, `store` and the top-level modules.
"""
