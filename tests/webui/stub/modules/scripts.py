"""Stand-in of modules/scripts.py: the Script base class and the AlwaysVisible marker."""


class AlwaysVisibleMarker:
    pass


AlwaysVisible = AlwaysVisibleMarker()


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def before_hr(self, p, *args):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass


class ScriptRunner:
    """Calls each always-on script's hooks with its slice of p.script_args, like the webui."""

    def __init__(self, scripts_with_args):
        self.alwayson_scripts = []
        self.script_args = []
        for script, args in scripts_with_args:
            script.args_from = len(self.script_args)
            self.script_args.extend(args)
            script.args_to = len(self.script_args)
            self.alwayson_scripts.append(script)

    def _call(self, hook, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            args = p.script_args[script.args_from : script.args_to]
            getattr(script, hook)(p, *extra, *args, **kwargs)

    def before_process(self, p):
        self._call("before_process", p)

    def process(self, p):
        self._call("process", p)

    def process_batch(self, p, **kwargs):
        self._call("process_batch", p, **kwargs)

    def before_hr(self, p):
        self._call("before_hr", p)

    def process_before_every_sampling(self, p, **kwargs):
        self._call("process_before_every_sampling", p, **kwargs)

    def post_sample(self, p, ps):
        self._call("post_sample", p, ps)

    def postprocess_batch(self, p, images, **kwargs):
        self._call("postprocess_batch", p, images=images, **kwargs)

    def postprocess(self, p, processed):
        for script in self.alwayson_scripts:
            script.postprocess(p, processed, *p.script_args[script.args_from : script.args_to])


def basedir():
    return None
