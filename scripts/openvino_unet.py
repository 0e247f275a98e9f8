"""sd-ov in the webui: registration only. The adapter is the `sd_ov_webui` package beside `sd_ov`.

Failure policy: whatever goes wrong on the OpenVINO side (no device, unsupported model, full
disk, a shape the compiled model refuses, NaN in its output) is reported in the progress area
and the infotext, and the picture is made by the torch UNet. A job never fails because of sd-ov.

Registrations stay here: after "Reload UI" the webui clears its callbacks and re-runs scripts,
not package imports. The Script class is defined here too (a Script subclass imported into this
module's namespace would be registered as well).
"""

from modules import script_callbacks, scripts

from sd_ov_webui import accordion, api, host, job, options, settings, tab


class OpenVINOScript(scripts.Script):
    """The accordion in txt2img/img2img: shows what will run, lets a job turn OpenVINO off."""

    def title(self):
        return "OpenVINO"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return accordion.build(self, is_img2img)

    def before_process(self, p, enabled=True, *args):
        job.before_process(p, enabled)

    def process(self, p, *args):
        job.before_init(p)

    def process_batch(self, p, enabled=True, interval=0, branch=0, schedule="uniform", *args, **kwargs):
        job.start_batch(p, interval, branch, schedule)

    def before_hr(self, p, enabled=True, interval=0, branch=0, schedule="uniform", *args):
        job.start_hires_pass(p, interval, branch, schedule)

    def process_before_every_sampling(self, p, *args, **kwargs):
        job.before_sampling(p)

    def post_sample(self, p, ps, *args):
        job.sampling_ended(p)

    def postprocess_batch(self, p, *args, **kwargs):
        job.write_infotext(p)
        job.decoding_ended(p)

    def postprocess(self, p, processed, *args):
        job.after_process(p)


def on_script_unloaded():
    served = options.current_openvino_unet()
    if served is not None:
        served.release()


print(f"[sd-ov] serving in {host.host_name()}")
script_callbacks.on_list_unets(options.list_unets)
script_callbacks.on_model_loaded(options.on_model_loaded)
script_callbacks.on_ui_settings(lambda: settings.register(options.reopen_current))
script_callbacks.on_script_unloaded(on_script_unloaded)
script_callbacks.on_ui_tabs(tab.on_ui_tabs)
script_callbacks.on_app_started(api.on_app_started)
