"""Stand-in of Forge's backend/patcher/base.py: the ModelPatcher's clone, object patches and LoRA
patches, as sd-ov meets them."""

import copy


def get_attr(obj, attr):
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr_raw(obj, attr, value):
    *path, last = attr.split(".")
    for name in path:
        obj = getattr(obj, name)
    setattr(obj, last, value)


class ModelPatcher:
    def __init__(self, model, load_device="cpu", offload_device="cpu", size=0, current_device=None, **kwargs):
        self.size = size
        self.model = model
        self.lora_patches = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.model_options = {"transformer_options": {}}
        self.load_device = load_device
        self.offload_device = offload_device
        self.current_device = current_device or offload_device

    def clone(self):
        n = type(self)(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        """As Forge's: each patch kept per weight the model has, with its strengths."""
        model_keys = {k for k, _ in self.model.named_parameters()}
        this_patches = {}
        for k, value in patches.items():
            key, offset, function = (
                (k, None, None) if isinstance(k, str) else (k[0], k[1], k[2] if len(k) > 2 else None)
            )
            if key in model_keys:
                this_patches.setdefault(key, []).append(
                    [strength_patch, value, strength_model, offset, function]
                )
        self.lora_patches[(filename, strength_patch, strength_model, online_mode)] = this_patches

    def set_model_patch(self, patch, name):
        to = self.model_options["transformer_options"]
        to.setdefault("patches", {})
        to["patches"][name] = to["patches"].get(name, []) + [patch]

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def forge_patch_model(self, target_device=None):
        for k, item in self.object_patches.items():
            old = get_attr(self.model, k)
            if k not in self.object_patches_backup:
                self.object_patches_backup[k] = old
            set_attr_raw(self.model, k, item)
        return self.model

    def forge_unpatch_model(self, target_device=None):
        for k in list(self.object_patches_backup):
            set_attr_raw(self.model, k, self.object_patches_backup[k])
        self.object_patches_backup = {}
