"""Stand-in of modules/script_callbacks.py: registration lists and the callers the webui uses."""

from collections import namedtuple

ScriptCallback = namedtuple("ScriptCallback", ["script", "callback", "name"])
callback_map: dict[str, list[ScriptCallback]] = {
    "callbacks_list_unets": [],
    "callbacks_ui_settings": [],
    "callbacks_ui_tabs": [],
    "callbacks_model_loaded": [],
    "callbacks_script_unloaded": [],
    "callbacks_app_started": [],
}


def _add(key, callback, name=None):
    callback_map[key].append(ScriptCallback("stub", callback, name))


def clear_callbacks():
    for callbacks in callback_map.values():
        callbacks.clear()


def on_list_unets(callback, *, name=None):
    """callback(unet_list: list) appends SdUnetOption objects."""
    _add("callbacks_list_unets", callback, name)


def on_ui_settings(callback, *, name=None):
    _add("callbacks_ui_settings", callback, name)


def on_ui_tabs(callback, *, name=None):
    _add("callbacks_ui_tabs", callback, name)


def on_model_loaded(callback, *, name=None):
    _add("callbacks_model_loaded", callback, name)


def on_script_unloaded(callback, *, name=None):
    _add("callbacks_script_unloaded", callback, name)


def on_app_started(callback, *, name=None):
    """callback(demo: gr.Blocks | None, app: FastAPI); extensions add API routes here."""
    _add("callbacks_app_started", callback, name)


def app_started_callback(demo, app):
    for c in callback_map["callbacks_app_started"]:
        c.callback(demo, app)


def list_unets_callback():
    res = []
    for c in callback_map["callbacks_list_unets"]:
        c.callback(res)
    return res


def ui_settings_callback():
    for c in callback_map["callbacks_ui_settings"]:
        c.callback()


def ui_tabs_callback():
    res = []
    for c in callback_map["callbacks_ui_tabs"]:
        res += c.callback() or []
    return res


def script_unloaded_callback():
    for c in reversed(callback_map["callbacks_script_unloaded"]):
        c.callback()


def model_loaded_callback(sd_model):
    """Called by sd_models after a checkpoint's weights load (and by sd_vae after a VAE change),
    before `sd_unet.apply_unet()`."""
    for c in callback_map["callbacks_model_loaded"]:
        c.callback(sd_model)
