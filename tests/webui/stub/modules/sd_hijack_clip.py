"""Stand-in of modules/sd_hijack_clip.py and the token embedding of modules/sd_hijack.py: the
webui's SD1.x prompt encoder around a transformers CLIPTextModel. `encode_with_transformers`
and `EmbeddingsWithFixes.forward` are the webui's code; tokenizing is a stand-in (no vocabulary
offline): a prompt's words hash to token ids, and a word `<ti>` is a textual-inversion
embedding whose vectors replace the tokens after it, as the webui's fixes do."""

import hashlib

import torch

from modules import shared

TI_WORD = "<ti>"


class Embedding:
    def __init__(self, vec):
        self.vec = vec


class ModelHijack:
    fixes = None


model_hijack = ModelHijack()


class EmbeddingsWithFixes(torch.nn.Module):
    def __init__(self, wrapped, embeddings, textual_inversion_key="clip_l"):
        super().__init__()
        self.wrapped = wrapped
        self.embeddings = embeddings
        self.textual_inversion_key = textual_inversion_key

    def forward(self, input_ids):
        batch_fixes = self.embeddings.fixes
        self.embeddings.fixes = None
        inputs_embeds = self.wrapped(input_ids)
        if batch_fixes is None or len(batch_fixes) == 0 or max([len(x) for x in batch_fixes]) == 0:
            return inputs_embeds
        vecs = []
        for fixes, tensor in zip(batch_fixes, inputs_embeds, strict=True):
            for offset, embedding in fixes:
                emb = embedding.vec
                emb_len = min(tensor.shape[0] - offset - 1, emb.shape[0])
                tensor = torch.cat(
                    [tensor[0 : offset + 1], emb[0:emb_len], tensor[offset + 1 + emb_len :]]
                ).to(dtype=inputs_embeds.dtype)
            vecs.append(tensor)
        return torch.stack(vecs)


class FrozenCLIPEmbedder(torch.nn.Module):
    """ldm's FrozenCLIPEmbedder: holds the transformer (and, in the webui, the tokenizer)."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer


class FrozenCLIPEmbedderWithCustomWords(torch.nn.Module):
    def __init__(self, wrapped, hijack=model_hijack):
        super().__init__()
        self.wrapped = wrapped
        self.hijack = hijack
        embeddings = wrapped.transformer.text_model.embeddings
        if not isinstance(embeddings.token_embedding, EmbeddingsWithFixes):
            embeddings.token_embedding = EmbeddingsWithFixes(embeddings.token_embedding, hijack)
        self.ti_vectors = torch.randn(
            2, embeddings.token_embedding.wrapped.embedding_dim, generator=torch.Generator().manual_seed(7)
        )

    def tokenize(self, prompt):
        """ids [77] and the textual-inversion fixes of one prompt (stand-in)."""
        vocab = self.wrapped.transformer.config.vocab_size
        ids, fixes = [vocab - 2], []
        for word in prompt.split():
            if word == TI_WORD:
                fixes.append((len(ids) - 1, Embedding(self.ti_vectors)))
                ids += [0, 0]
            else:
                ids.append(int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little") % (vocab - 2))
        ids = (ids + [vocab - 1] * 77)[:77]
        return torch.tensor(ids), fixes

    def forward(self, prompts):
        tokens, fixes = zip(*(self.tokenize(p) for p in prompts), strict=True)
        self.hijack.fixes = list(fixes)
        return self.encode_with_transformers(torch.stack(tokens))

    def encode_with_transformers(self, tokens):
        opts = shared.opts
        outputs = self.wrapped.transformer(
            input_ids=tokens, output_hidden_states=-opts.CLIP_stop_at_last_layers
        )

        if opts.CLIP_stop_at_last_layers > 1:
            z = outputs.hidden_states[-opts.CLIP_stop_at_last_layers]
            z = self.wrapped.transformer.text_model.final_layer_norm(z)
        else:
            z = outputs.last_hidden_state

        return z


class FrozenCLIPEmbedderForSDXLWithCustomWords(FrozenCLIPEmbedderWithCustomWords):
    """SDXL's first text encoder (v1.10.1's code): the raw hidden state of `layer_idx`."""

    def encode_with_transformers(self, tokens):
        opts = shared.opts
        outputs = self.wrapped.transformer(
            input_ids=tokens, output_hidden_states=self.wrapped.layer == "hidden"
        )

        if opts.sdxl_clip_l_skip is True:
            z = outputs.hidden_states[-opts.CLIP_stop_at_last_layers]
        elif self.wrapped.layer == "last":
            z = outputs.last_hidden_state
        else:
            z = outputs.hidden_states[self.wrapped.layer_idx]

        return z
