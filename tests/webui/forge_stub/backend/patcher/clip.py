"""Stand-in of Forge's backend/patcher/clip.py: the text encoders' patcher, where Forge's Lora
extension puts a LoRA's text-encoder patches (`clip.patcher.lora_patches`)."""

from backend.patcher.base import ModelPatcher


class CLIP:
    def __init__(self, model_dict=None, tokenizer_dict=None, no_init=False):
        if no_init:
            return
        self.cond_stage_model = model_dict
        self.tokenizer = tokenizer_dict
        self.patcher = ModelPatcher(self.cond_stage_model)

    def clone(self):
        n = CLIP(no_init=True)
        n.patcher = self.patcher.clone()
        n.cond_stage_model = self.cond_stage_model
        n.tokenizer = self.tokenizer
        return n

    def add_patches(self, *arg, **kwargs):
        return self.patcher.add_patches(*arg, **kwargs)
