"""From torch to OpenVINO graphs, and graph surgery: the ldm/sgm UNet (built, described, made
traceable, exported), DeepCache's full and shallow models, token merging and FFN pruning, the text
encoders' and TAESD's graphs, ControlNet's residual inputs, the LoRA branch.

Imports: `store` and the top-level modules; never `runtime` or above (a graph does not know how it
is compiled or served).
"""
