"""Stand-in of modules/sd_hijack_open_clip.py: SDXL's second text encoder around sgm's
FrozenOpenCLIPEmbedder2 (only where sgm and open_clip import). `encode_with_transformers` is the
webui's v1.10.1 code; tokenizing is left to the tests."""

import torch

from modules.sd_hijack_clip import EmbeddingsWithFixes, model_hijack


class FrozenOpenCLIPEmbedder2WithCustomWords(torch.nn.Module):
    def __init__(self, wrapped, hijack=model_hijack):
        super().__init__()
        self.wrapped = wrapped
        self.hijack = hijack
        if not isinstance(wrapped.model.token_embedding, EmbeddingsWithFixes):
            wrapped.model.token_embedding = EmbeddingsWithFixes(
                wrapped.model.token_embedding, hijack, "clip_g"
            )

    def encode_with_transformers(self, tokens):
        d = self.wrapped.encode_with_transformer(tokens)
        z = d[self.wrapped.layer]

        pooled = d.get("pooled")
        if pooled is not None:
            z.pooled = pooled

        return z
