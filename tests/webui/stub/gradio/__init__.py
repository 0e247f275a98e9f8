"""A recorder of the few gradio components sd-ov's adapter builds (gradio is the webui's)."""


class Component:
    created = []

    def __init__(self, value=None, label=None, **kwargs):
        self.value = value
        self.label = label
        self.kwargs = kwargs
        self.events = []
        Component.created.append(self)

    def click(self, fn=None, inputs=None, outputs=None, **kwargs):
        self.events.append(("click", fn, inputs, outputs))

    change = click

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Accordion(Component):
    def __init__(self, label=None, open=True, **kwargs):
        super().__init__(label=label, open=open, **kwargs)


class Blocks(Component):
    pass


class Row(Component):
    pass


class Column(Component):
    pass


class Checkbox(Component):
    pass


class HTML(Component):
    pass


class Button(Component):
    pass


class Dropdown(Component):
    pass


class Radio(Component):
    pass


class Slider(Component):
    pass


class Textbox(Component):
    pass


class Progress:
    """gradio.Progress: called with (fraction, desc=...); records the calls."""

    def __init__(self, track_tqdm=False):
        self.calls = []

    def __call__(self, progress, desc=None, **kwargs):
        self.calls.append((progress, desc))


def update(**kwargs):
    return {"__type__": "update", **kwargs}
