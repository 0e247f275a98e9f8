"""Compiled models: OpenVINO's Core and devices, the CPU's capabilities, the one `CompiledPart`
base and the UNet, VAE, text encoder and control model built on it, the runtime settings, memory
(page release, heap trim), the torch weights freed while OpenVINO serves, and the weight
compression those parts' INT8 settings use (NNCF on a saved IR).

Imports: `graphs`, `store` and the top-level modules.
"""
