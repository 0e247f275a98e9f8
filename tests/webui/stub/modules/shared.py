"""Stand-in of modules/shared.py + options.py: opts with OptionInfo/add_option/onchange, state."""

from types import SimpleNamespace


class OptionInfo:
    def __init__(
        self,
        default=None,
        label="",
        component=None,
        component_args=None,
        onchange=None,
        section=None,
        refresh=None,
        comment_before="",
        comment_after="",
        infotext=None,
        restrict_api=False,
        category_id=None,
    ):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.refresh = refresh
        self.category_id = category_id
        self.comment_after = comment_after

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def needs_reload_ui(self):
        return self


class Options:
    def __init__(self):
        # as the webui's after loading config.json: only the options the file holds (here sd_unet);
        # the others answer their default through __getattr__, and an override of one of them is
        # not stored by process_images, so it is not restored either
        super().__setattr__("data", {"sd_unet": "Automatic"})
        super().__setattr__(
            "data_labels",
            {
                "sd_unet": OptionInfo("Automatic", "SD Unet"),
                "token_merging_ratio": OptionInfo(0.0, "Token merging ratio"),
                "token_merging_ratio_hr": OptionInfo(0.0, "Token merging ratio for high-res pass"),
                "CLIP_stop_at_last_layers": OptionInfo(1, "Clip skip"),
                "sdxl_clip_l_skip": OptionInfo(False, "Clip skip SDXL"),
                "sd_vae_decode_method": OptionInfo("Full", "VAE type for decode"),
                "skip_early_cond": OptionInfo(0.0, "Ignore negative prompt during early sampling"),
                "live_previews_enable": OptionInfo(True, "Show live previews of the created image"),
                "show_progress_type": OptionInfo("Approx NN", "Live preview method"),
            },
        )

    def __setattr__(self, key, value):
        self.data[key] = value

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def set(self, key, value, is_api=False, run_callbacks=True):
        oldval = self.data.get(key, None)
        if oldval == value:
            return False
        self.data[key] = value
        info = self.data_labels.get(key)
        if run_callbacks and info is not None and info.onchange is not None:
            info.onchange()
        return True

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data and not getattr(info, "do_not_save", False):
            self.data[key] = info.default

    def onchange(self, key, func, call=True):
        item = self.data_labels.get(key)
        item.onchange = func
        if call:
            func()


class State:
    def __init__(self):
        self.interrupted = False
        self.skipped = False
        self.job = ""
        self.job_count = 0
        self.sampling_step = 0
        self.textinfo = None
        self.textinfo_history = []

    def __setattr__(self, key, value):
        if key == "textinfo" and value is not None and hasattr(self, "textinfo_history"):
            self.textinfo_history.append(value)
        super().__setattr__(key, value)

    def interrupt(self):
        self.interrupted = True

    def begin(self, job: str = "(unknown)"):
        self.interrupted = False
        self.skipped = False
        self.job = job
        self.job_count = -1
        self.sampling_step = 0
        self.textinfo = None

    def end(self):
        self.job = ""
        self.job_count = 0


opts = Options()
state = State()
sd_model = None
loaded_hypernetworks = []  # the job's <hypernet:...> (modules/hypernetworks fills it)
cmd_opts = SimpleNamespace(lowvram=False, medvram=False, no_half=True, use_cpu=["all"])
