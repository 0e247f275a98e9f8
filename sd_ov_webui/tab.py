"""The OpenVINO tab: Optimize the loaded checkpoint's UNet into a recipe; list and delete recipes.

The Optimize inputs are built as a `{field: component}` mapping and their values are read back by
field name, so the form's order cannot drift between the UI and the parser.
"""

from __future__ import annotations

import html

from modules import sd_unet, shared

from sd_ov import (
    INT8_MODES,
    MAX_DEEPCACHE_BRANCH,
    MAX_TOME_RATIO,
    OPTIMIZE_FIELDS,
    PRECISIONS,
    PRESETS,
    PRUNE_MODES,
    cache,
    default_prompts,
    optimize,
    report,
)

from .optimize_job import run_optimize
from .options import current_openvino_unet
from .settings import cache_root, device_choices, opt


def recipe_entries_html() -> str:
    try:
        root = cache_root()
        return report.entries_html(optimize.recipe_entries(root), cache.total_bytes(root))
    except OSError as err:
        return f"<p>Cannot read the cache folder: {html.escape(str(err))}</p>"


def entry_folder(entry: cache.CacheEntry) -> str:
    """`<checkpoint folder>/<recipe folder>`: unique in the cache."""
    return f"{entry.path.parent.name}/{entry.path.name}"


def entry_choices() -> list[str]:
    try:
        return [
            f"{e.manifest.checkpoint_name} | {report.entry_label(e)} | {entry_folder(e)}"
            for e in optimize.recipe_entries(cache_root())
        ]
    except OSError:
        return []


def delete_entry(choice: str) -> str:
    """Delete the chosen entry and its DeepCache pairs (giving them back first if they serve) and
    refresh the SD Unet list."""
    folder = str(choice or "").rsplit("|", 1)[-1].strip()
    matches = [e for e in optimize.recipe_entries(cache_root()) if entry_folder(e) == folder]
    if not matches:
        return f"<p>Nothing to delete: {html.escape(str(choice))} is not in the cache.</p>"
    serving = current_openvino_unet()
    if serving is not None and serving.served is not None and serving.served.entry.path == matches[0].path:
        sd_unet.apply_unet("None")  # it is in use: give it back first
    left = [f for pair in optimize.deepcache_pairs(cache_root(), matches[0]) for f in cache.delete(pair.path)]
    left += cache.delete(matches[0].path)
    sd_unet.list_unets()
    said = f"<p>Deleted {html.escape(matches[0].path.name)}."
    if left:  # Windows: another process (a second webui, the CLI) still maps them
        said += f" {len(left)} of its files are in use by another process; they go at the next start."
    return said + "</p>"


def sampler_choices() -> list[str]:
    try:
        from modules import sd_samplers

        return list(sd_samplers.visible_sampler_names())
    except Exception:  # an older webui: Euler is always there
        return ["Euler"]


def form_components() -> dict:
    """One component per Optimize field (OPTIMIZE_FIELDS), laid out as the tab shows them."""
    import gradio as gr

    D = OPTIMIZE_FIELDS

    def slider(label, minimum, maximum, value, step, elem_id):
        return gr.Slider(
            minimum=minimum, maximum=maximum, value=value, step=step, label=label, elem_id=elem_id
        )

    c: dict = {}
    with gr.Row():
        with gr.Column():
            c["preset"] = gr.Radio(
                choices=["none", *PRESETS],
                value=D["preset"],
                label="Preset (fastest: the fastest picture measured)",
                elem_id="sd_ov_preset",
            )
            c["int8"] = gr.Radio(
                choices=list(INT8_MODES), value=D["int8"], label="INT8", elem_id="sd_ov_int8"
            )
            c["smooth_quant"] = gr.Checkbox(
                value=D["smooth_quant"], label="SmoothQuant (INT8 full)", elem_id="sd_ov_sq"
            )
            c["tome"] = slider("Token merging ratio", 0.0, MAX_TOME_RATIO, D["tome"], 0.05, "sd_ov_tome")
            c["prune"] = gr.Radio(
                choices=list(PRUNE_MODES), value=D["prune"], label="Pruning", elem_id="sd_ov_prune"
            )
            c["prune_ratio"] = slider("Pruning %", 5, 80, D["prune_ratio"], 5, "sd_ov_prune_ratio")
            c["precision"] = gr.Radio(
                choices=list(PRECISIONS),
                value=D["precision"],
                label="Inference precision",
                elem_id="sd_ov_recipe_precision",
            )
            c["deepcache_branch"] = gr.Dropdown(
                choices=["off", *(str(b) for b in range(MAX_DEEPCACHE_BRANCH + 1))],
                value=lambda: str(opt("sd_ov_deepcache_branch")),  # the branch a DeepCache job asks for
                label="DeepCache pair too (skip branch)",
                elem_id="sd_ov_recipe_deepcache",
            )
            c["vae_int8"] = gr.Checkbox(
                value=D["vae_int8"],
                label="INT8 VAE decoder too (served when Settings → VAE precision is auto)",
                elem_id="sd_ov_vae_int8",
            )
            c["device"] = gr.Dropdown(
                choices=device_choices(),
                value=lambda: opt("sd_ov_device"),
                label="Device",
                elem_id="sd_ov_recipe_device",
            )
        with gr.Column():
            c["prompts_text"] = gr.Textbox(
                value="\n".join(default_prompts()[:4]),
                lines=6,
                label="Calibration prompts (one per line)",
                elem_id="sd_ov_prompts",
            )
            with gr.Row():
                c["sampler"] = gr.Dropdown(
                    choices=sampler_choices(), value=D["sampler"], label="Sampler", elem_id="sd_ov_sampler"
                )
                c["calib_size"] = gr.Textbox(
                    value=D["calib_size"], label="Calibration size", elem_id="sd_ov_calib_size"
                )
                c["calib_steps"] = slider(
                    "Calibration steps", 2, 30, D["calib_steps"], 1, "sd_ov_calib_steps"
                )
                c["samples"] = slider("Calibration samples", 1, 64, D["samples"], 1, "sd_ov_samples")
            with gr.Row():
                c["sizes_text"] = gr.Textbox(
                    value=D["sizes_text"], label="Sizes to compile ahead", elem_id="sd_ov_sizes"
                )
                c["batch"] = slider("Batch size", 1, 8, D["batch"], 1, "sd_ov_batch")
                c["chunks"] = slider("Prompt chunks (75 tokens)", 1, 4, D["chunks"], 1, "sd_ov_chunks")
            with gr.Row():
                c["measure_size"] = gr.Textbox(
                    value=D["measure_size"], label="Measure at", elem_id="sd_ov_measure_size"
                )
                c["compare_picture"] = gr.Checkbox(
                    value=D["compare_picture"],
                    label="Compare a sample picture with torch",
                    elem_id="sd_ov_compare",
                )
    missing = set(OPTIMIZE_FIELDS) ^ set(c)
    assert not missing, f"the tab and the form disagree on {sorted(missing)}"
    return c


def on_ui_tabs():
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as tab:
        gr.HTML(
            "<p>Optimize the loaded checkpoint's UNet into an OpenVINO recipe. The result appears in "
            "Settings → SD Unet as <code>[OpenVINO &lt;recipe&gt;] &lt;checkpoint&gt;</code>.</p>"
        )
        components = form_components()
        with gr.Row():
            start = gr.Button(value="Optimize", variant="primary", elem_id="sd_ov_optimize")
            cancel = gr.Button(value="Cancel", elem_id="sd_ov_cancel")
        result = gr.HTML(elem_id="sd_ov_report")
        entries = gr.HTML(value=recipe_entries_html, elem_id="sd_ov_entries")
        with gr.Row():
            chosen = gr.Dropdown(
                choices=entry_choices(), label="Optimized UNets", elem_id="sd_ov_entry_choice"
            )
            refresh = gr.Button(value="Refresh", elem_id="sd_ov_refresh_entries")
            delete = gr.Button(value="Delete", elem_id="sd_ov_delete")
        fields = list(components)

        def optimize_click(*values, progress=gr.Progress()):
            message = run_optimize(dict(zip(fields, values, strict=True)), progress_bar=progress)
            return message, recipe_entries_html()

        start.click(fn=optimize_click, inputs=[components[f] for f in fields], outputs=[result, entries])
        cancel.click(fn=lambda: shared.state.interrupt(), inputs=[], outputs=[])
        refresh.click(
            fn=lambda: (recipe_entries_html(), gr.update(choices=entry_choices())),
            inputs=[],
            outputs=[entries, chosen],
        )
        delete.click(
            fn=lambda choice: (
                delete_entry(choice),
                recipe_entries_html(),
                gr.update(choices=entry_choices(), value=None),
            ),
            inputs=[chosen],
            outputs=[result, entries, chosen],
        )
    return [(tab, "OpenVINO", "sd_ov_tab")]
