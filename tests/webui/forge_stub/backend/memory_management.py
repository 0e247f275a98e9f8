"""Stand-in of Forge's backend/memory_management.py: `load_models_gpu` loads a patcher (its object
patches applied) after unloading the other clones of its model (theirs undone)."""

current_loaded_models = []


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0):
    for model in models:
        if any(loaded is model for loaded in current_loaded_models):
            continue
        for loaded in [m for m in current_loaded_models if model.is_clone(m)]:
            loaded.forge_unpatch_model()
            current_loaded_models.remove(loaded)
        model.forge_patch_model()
        current_loaded_models.insert(0, model)
