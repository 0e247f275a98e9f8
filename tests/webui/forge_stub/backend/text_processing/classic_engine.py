"""Stand-in of Forge's backend/text_processing/classic_engine.py: its SD1.x text engine as sd-ov
meets it: the textual-inversion embedding wrapped around CLIP's token embedding (its `.fixes`
read and cleared per call), and `encode_with_transformers` as Forge's (the clip skip it reads,
the final layer norm). Tokenizing, chunking and emphasis are left out."""

import torch


class CLIPEmbeddingForTextualInversion(torch.nn.Module):
    def __init__(self, wrapped, embeddings, textual_inversion_key="clip_l"):
        super().__init__()
        self.wrapped = wrapped
        self.embeddings = embeddings
        self.textual_inversion_key = textual_inversion_key
        self.weight = self.wrapped.weight

    def forward(self, input_ids):
        batch_fixes = self.embeddings.fixes
        self.embeddings.fixes = None
        inputs_embeds = self.wrapped(input_ids)
        if not batch_fixes or max(len(x) for x in batch_fixes) == 0:
            return inputs_embeds
        vecs = []
        for fixes, tensor in zip(batch_fixes, inputs_embeds, strict=False):
            for offset, vec in fixes:
                emb_len = min(tensor.shape[0] - offset - 1, vec.shape[0])
                tensor = torch.cat([tensor[0 : offset + 1], vec[0:emb_len], tensor[offset + 1 + emb_len :]])
            vecs.append(tensor)
        return torch.stack(vecs)


class EmbeddingDatabase:
    def __init__(self):
        self.fixes = None


class ClassicTextProcessingEngine:
    def __init__(
        self,
        text_encoder,
        tokenizer=None,
        chunk_length=75,
        embedding_dir=None,
        embedding_key="clip_l",
        embedding_expected_shape=768,
        emphasis_name="Original",
        text_projection=False,
        minimal_clip_skip=1,
        clip_skip=1,
        return_pooled=False,
        final_layer_norm=True,
    ):
        self.text_encoder = text_encoder
        self.embeddings = EmbeddingDatabase()
        self.embedding_key = embedding_key
        self.text_projection = text_projection
        self.minimal_clip_skip = minimal_clip_skip
        self.clip_skip = clip_skip
        self.return_pooled = return_pooled
        self.final_layer_norm = final_layer_norm
        model_embeddings = text_encoder.transformer.text_model.embeddings
        model_embeddings.token_embedding = CLIPEmbeddingForTextualInversion(
            model_embeddings.token_embedding, self.embeddings, textual_inversion_key=embedding_key
        )

    def encode_with_transformers(self, tokens):
        outputs = self.text_encoder.transformer(tokens, output_hidden_states=True)
        layer_id = -max(self.clip_skip, self.minimal_clip_skip)
        z = outputs.hidden_states[layer_id]
        if self.final_layer_norm:
            z = self.text_encoder.transformer.text_model.final_layer_norm(z)
        return z
