"""Stand-in of Forge's backend/patcher/controlnet.py: a unit (`ControlNet`, linked to the units
before it) computes its control model's outputs per UNet call within its timestep range and
merges them with the earlier units' (`control_merge`) into {"input", "middle", "output"}, as Forge
does; the predictor's input scaling and the hint's resizing are left out."""


class ControlBase:
    def __init__(self, device=None):
        self.cond_hint_original = None
        self.cond_hint = None
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.global_average_pooling = False
        self.timestep_range = None
        self.transformer_options = {}
        self.device = device or "cpu"
        self.previous_controlnet = None

    def set_cond_hint(self, cond_hint, strength=1.0, timestep_percent_range=(0.0, 1.0)):
        self.cond_hint_original = cond_hint
        self.strength = strength
        self.timestep_percent_range = timestep_percent_range
        return self

    def set_previous_controlnet(self, controlnet):
        self.previous_controlnet = controlnet
        return self

    def control_merge(self, control_input, control_output, control_prev, output_dtype):
        out = {"input": [], "middle": [], "output": []}
        if control_input is not None:
            for i in range(len(control_input)):
                x = control_input[i]
                if x is not None:
                    x *= self.strength
                out["input"].insert(0, x)
        if control_output is not None:
            for i in range(len(control_output)):
                key = "middle" if i == (len(control_output) - 1) else "output"
                x = control_output[i]
                if x is not None:
                    x *= self.strength
                    x = x.to(output_dtype)
                out[key].append(x)
        if control_prev is not None:
            for key in ("input", "middle", "output"):
                o = out[key]
                for i in range(len(control_prev[key])):
                    prev_val = control_prev[key][i]
                    if i >= len(o):
                        o.append(prev_val)
                    elif prev_val is not None:
                        if o[i] is None:
                            o[i] = prev_val
                        else:
                            o[i] += prev_val
        return out


class ControlNet(ControlBase):
    def __init__(
        self,
        control_model,
        global_average_pooling=False,
        device=None,
        load_device=None,
        manual_cast_dtype=None,
    ):
        super().__init__(device)
        self.control_model = control_model

    def get_control(self, x_noisy, t, cond, batched_number):
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number)
        outside = self.timestep_range is not None and not (
            self.timestep_range[1] <= t[0] <= self.timestep_range[0]
        )
        if outside:
            return control_prev
        control = self.control_model(
            x=x_noisy,
            hint=self.cond_hint_original,
            timesteps=t.float(),
            context=cond["c_crossattn"],
            y=cond.get("y"),
        )
        return self.control_merge(None, control, control_prev, x_noisy.dtype)


class T2IAdapter(ControlBase):
    def __init__(self, t2i_model, channels_in, compression_ratio, upscale_algorithm, device=None):
        super().__init__(device)
        self.t2i_model = t2i_model

    def get_control(self, x_noisy, t, cond, batched_number):
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number)
        return self.control_merge(self.t2i_model(x_noisy), None, control_prev, x_noisy.dtype)
