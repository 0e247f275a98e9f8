"""The OpenVINO tab: Optimize the loaded checkpoint's UNet into a recipe; list, delete and export
recipes (for OpenVINO GenAI).

The Optimize inputs are made from the engine's field table as a `{field: component}` mapping and
their values are read back by field name, so the form's order cannot drift between the UI and the
parser, and a new field shows up here without a line of this module.
"""

from __future__ import annotations

import html
import logging

from modules import sd_unet, shared

from sd_ov import (
    GENAI_SAMPLERS,
    Cancelled,
    SdOvError,
    cache,
    deepcache_pairs,
    default_prompts,
    optimize_fields,
    recipe_entries,
    report,
)

from .genai_export import export_recipe
from .optimize_job import LAST_SWITCH, run_optimize, set_sd_unet
from .options import current_openvino_unet
from .progress import with_progress_bar
from .settings import cache_root, device_choices, opt

log = logging.getLogger("sd_ov")


def recipe_entries_html() -> str:
    try:
        root = cache_root()
        return report.entries_html(recipe_entries(root), cache.total_bytes(root))
    except OSError as err:
        return f"<p>Cannot read the cache folder: {html.escape(str(err))}</p>"


def entry_folder(entry: cache.CacheEntry) -> str:
    """`<checkpoint folder>/<recipe folder>`: unique in the cache."""
    return f"{entry.path.parent.name}/{entry.path.name}"


def entry_choices() -> list[str]:
    try:
        return [
            f"{e.manifest.checkpoint_name} | {report.entry_label(e)} | {entry_folder(e)}"
            for e in recipe_entries(cache_root())
        ]
    except OSError:
        return []


def delete_entry(choice: str) -> str:
    """Delete the chosen entry and its DeepCache pairs (giving them back first if they serve) and
    refresh the SD Unet list."""
    folder = str(choice or "").rsplit("|", 1)[-1].strip()
    matches = [e for e in recipe_entries(cache_root()) if entry_folder(e) == folder]
    if not matches:
        return f"<p>Nothing to delete: {html.escape(str(choice))} is not in the cache.</p>"
    serving = current_openvino_unet()
    if serving is not None and serving.served is not None and serving.served.entry.path == matches[0].path:
        sd_unet.apply_unet("None")  # it is in use: give it back first
    left = [f for pair in deepcache_pairs(cache_root(), matches[0]) for f in cache.delete(pair.path)]
    left += cache.delete(matches[0].path)
    sd_unet.list_unets()
    said = f"<p>Deleted {html.escape(matches[0].path.name)}."
    if left:  # Windows: another process (a second webui, the CLI) still maps them
        said += f" {len(left)} of its files are in use by another process; they go at the next start."
    return said + "</p>"


def export_choice(choice: str, progress_bar=None, loras: str = "", sampler: str = "Euler") -> str:
    """The chosen entry as a folder for OpenVINO GenAI (genai_export.py), with the webui's progress
    and `loras` (`<lora:name:weight>`) baked in."""
    folder = str(choice or "").rsplit("|", 1)[-1].strip()
    matches = [e for e in recipe_entries(cache_root()) if entry_folder(e) == folder]
    if not matches:
        return f"<p>Nothing to export: {html.escape(str(choice))} is not in the cache.</p>"

    progress = with_progress_bar(progress_bar)

    try:
        out, size, notes = export_recipe(matches[0], progress=progress, loras=loras, sampler=sampler)
    except Cancelled:
        return "<p>Export cancelled: nothing was written.</p>"
    except SdOvError as err:
        return f"<p style='color:#c33'>Cannot export: {html.escape(str(err))}</p>"
    except Exception as err:  # the webui must survive whatever goes wrong
        log.exception("sd-ov: the GenAI export failed")
        return f"<p style='color:#c33'>The export failed: {html.escape(f'{type(err).__name__}: {err}')}</p>"
    return (
        f"<p>Written for OpenVINO GenAI: <code>{html.escape(str(out))}</code> ({size / 2**30:.2f} GiB). "
        'Run it with <code>openvino_genai.Text2ImagePipeline(folder, "CPU")</code>, or serve it with '
        'OpenVINO Model Server (README, "Outside the webui").</p>'
        + "".join(f"<p>Note: {html.escape(n)}</p>" for n in notes)
    )


def back_to_previous_unet() -> str:
    """The tab's "Back to ..." button: SD Unet is what it was before the last Optimize made its
    recipe current."""
    previous = LAST_SWITCH["previous"]
    if previous is None:
        return "<p>Nothing to go back to.</p>"
    set_sd_unet(previous)
    LAST_SWITCH["previous"] = None
    return f"<p>SD Unet is {html.escape(previous)} again.</p>"


def sampler_choices() -> list[str]:
    try:
        from modules import sd_samplers

        return list(sd_samplers.visible_sampler_names())
    except Exception:  # an older webui: Euler is always there
        return ["Euler"]


def form_components() -> dict:
    """One component per Optimize field, made from the engine's table (`optimize_fields`) and laid
    out by its groups: the first a column on the left, the next a column on the right, the rest
    rows under it. The webui fills in what only it knows: its devices and samplers, the shipped
    prompts, the Settings' DeepCache branch."""
    import gradio as gr

    host = {
        "device": {"choices": device_choices(), "value": lambda: opt("sd_ov_device")},
        "deepcache_branch": {"value": lambda: str(opt("sd_ov_deepcache_branch"))},
        "sampler": {"choices": sampler_choices()},
        "prompts_text": {"value": "\n".join(default_prompts()[:4]), "lines": 6},
    }
    kinds = {
        "radio": gr.Radio,
        "dropdown": gr.Dropdown,
        "checkbox": gr.Checkbox,
        "slider": gr.Slider,
        "textbox": gr.Textbox,
    }

    def make(row):
        kwargs = {"label": row.label, "elem_id": row.element, "value": row.default}
        if row.widget in ("radio", "dropdown"):
            kwargs["choices"] = list(row.options())
        if row.widget == "slider":
            low, high = row.slider or (row.low, row.high)
            kwargs.update(minimum=low, maximum=high, step=row.step)
        return kinds[row.widget](**{**kwargs, **host.get(row.name, {})})

    rows = list(optimize_fields().values())
    groups = list(dict.fromkeys(row.group for row in rows))
    c: dict = {}
    with gr.Row():
        with gr.Column():
            c.update({row.name: make(row) for row in rows if row.group == groups[0]})
        with gr.Column():
            c.update({row.name: make(row) for row in rows if row.group == groups[1]})
            for group in groups[2:]:
                with gr.Row():
                    c.update({row.name: make(row) for row in rows if row.group == group})
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
        back = gr.Button(value="Back to the previous SD Unet", visible=False, elem_id="sd_ov_back_unet")
        entries = gr.HTML(value=recipe_entries_html, elem_id="sd_ov_entries")
        with gr.Row():
            chosen = gr.Dropdown(
                choices=entry_choices(), label="Optimized UNets", elem_id="sd_ov_entry_choice"
            )
            refresh = gr.Button(value="Refresh", elem_id="sd_ov_refresh_entries")
            delete = gr.Button(value="Delete", elem_id="sd_ov_delete")
            export = gr.Button(value="Export for OpenVINO GenAI", elem_id="sd_ov_export_genai")
        with gr.Row():
            export_loras = gr.Textbox(
                label="LoRAs to bake into the GenAI export",
                placeholder="<lora:name:0.8> (as in a prompt; empty: none)",
                elem_id="sd_ov_export_loras",
            )
            export_sampler = gr.Dropdown(
                choices=list(GENAI_SAMPLERS),
                value="Euler",
                label="GenAI scheduler (as the webui's sampler)",
                elem_id="sd_ov_export_sampler",
            )
        fields = list(components)

        def optimize_click(*values, progress=gr.Progress()):
            LAST_SWITCH["previous"] = None
            message = run_optimize(dict(zip(fields, values, strict=True)), progress_bar=progress)
            previous = LAST_SWITCH["previous"]
            label = f"Back to {previous}" if previous else "Back to the previous SD Unet"
            return message, recipe_entries_html(), gr.update(visible=previous is not None, value=label)

        start.click(
            fn=optimize_click, inputs=[components[f] for f in fields], outputs=[result, entries, back]
        )
        back.click(
            fn=lambda: (back_to_previous_unet(), gr.update(visible=False)), inputs=[], outputs=[result, back]
        )
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
        export.click(
            fn=lambda choice, loras, sampler, progress=gr.Progress(): export_choice(
                choice, progress_bar=progress, loras=loras, sampler=sampler
            ),
            inputs=[chosen, export_loras, export_sampler],
            outputs=[result],
        )
    return [(tab, "OpenVINO", "sd_ov_tab")]
