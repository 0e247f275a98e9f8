"""The text encoders as traceable modules that start from token embeddings.

The host keeps the token embedding lookup, so whatever it does there (the webui's textual-inversion
vectors, its emphasis and >75-token chunking around the call) works unchanged, and OpenVINO runs
the rest. Each graph returns every layer's hidden state stacked, newest first (`out[k - 1]` is what
clip skip k reads), because the hosts pick different layers: SD1 the final-layer-normed one of
its clip skip, SDXL's CLIP-L the raw penultimate (or its clip skip), SDXL's OpenCLIP bigG the raw
penultimate plus the pooled output, SD2's OpenCLIP the layer-normed penultimate. A stack of hidden
states costs a few MB beside the weights; one graph per layer choice would cost the weights again.
"""

from __future__ import annotations

import torch


class _GivenEmbeddings(torch.nn.Module):
    """Stands in for the token embedding while tracing: returns the graph's input."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.value


class ClipFromEmbeddings(torch.nn.Module):
    """A transformers `CLIPTextModel` from its token embeddings [B, T, C] to the hidden state of
    every layer [L, B, T, C], final-layer-normed (`final_norm`, SD1) or raw (SDXL's CLIP-L).
    The graph is the model's own code: its token embedding is swapped for the given embeddings."""

    def __init__(self, transformer: torch.nn.Module, final_norm: bool) -> None:
        super().__init__()
        self.transformer = transformer
        self.final_norm = final_norm
        self.given = _GivenEmbeddings()

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        embeddings = self.transformer.text_model.embeddings
        saved = embeddings.token_embedding
        embeddings.token_embedding, self.given.value = self.given, embeds
        try:
            ids = torch.zeros(embeds.shape[:2], dtype=torch.long)  # only their shape is read
            hidden = self.transformer(input_ids=ids, output_hidden_states=True).hidden_states
        finally:
            embeddings.token_embedding, self.given.value = saved, None
        norm = self.transformer.text_model.final_layer_norm
        layers = [hidden[-k] for k in range(1, len(hidden))]
        return torch.stack([norm(h) for h in layers] if self.final_norm else layers)


class OpenClipFromEmbeddings(torch.nn.Module):
    """An open_clip text tower (`model`: token_embedding, positional_embedding, transformer,
    attn_mask, ln_final, text_projection) from its token embeddings [B, 77, C] and the index of
    each prompt's end token [B] to (every block's raw output [L, B, 77, C], newest first; the
    pooled, projected end-token feature [B, P]). The same steps as sgm's
    `FrozenOpenCLIPEmbedder2.encode_with_transformer` and ldm's `FrozenOpenCLIPEmbedder`, calling
    the model's own blocks; the end index is `tokens.argmax(-1)`, computed by the host."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, embeds: torch.Tensor, eot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        batch_first = bool(getattr(model.transformer, "batch_first", False))
        x = embeds + model.positional_embedding
        if not batch_first:
            x = x.permute(1, 0, 2)  # NLD -> LND
        outputs = []
        for block in model.transformer.resblocks:
            x = block(x, attn_mask=model.attn_mask)
            outputs.append(x if batch_first else x.permute(1, 0, 2))
        last = model.ln_final(outputs[-1])
        pooled = last[torch.arange(last.shape[0]), eot] @ model.text_projection
        return torch.stack(outputs[::-1]), pooled
