"""Stand-in of modules/processing.py: the order of hooks, settings overrides, apply_unet and
infotext that the webui follows in process_images / process_images_inner, with a real sampler
(Euler over the real ldm UNet, called through the patched UNetModel.forward)."""

import hashlib
import json

import torch
from PIL import Image

from modules import sd_unet, shared
from sd_ov.optimize.sampling import latent_to_image, sample_euler


class StableDiffusionProcessing:
    def __init__(
        self,
        sd_model,
        cond,
        uncond,
        width=256,
        height=256,
        steps=4,
        seed=0,
        scripts=None,
        script_args=(),
        override_settings=None,
        cfg_scale=7.0,
    ):
        self.sd_model = sd_model
        self.cfg_scale = cfg_scale
        self.cond = cond
        self.uncond = uncond
        self.width = width
        self.height = height
        self.steps = steps
        self.seed = seed
        self.scripts = scripts
        self.script_args = list(script_args)
        self.override_settings = dict(override_settings or {})
        self.override_settings_restore_afterwards = True
        self.extra_generation_params = {}
        self.enable_hr = False
        self.hr_scale = 1.5
        self.hr_second_pass_steps = 0
        self.token_merging_ratio = 0
        self.token_merging_ratio_hr = 0
        self.prompt = ""
        self.negative_prompt = ""
        self.tiling = False

    def init(self, all_prompts=None, all_seeds=None, all_subseeds=None):
        """txt2img's init makes no latent; img2img's encodes its pictures here (see below)."""
        self.init_latent = None

    def setup_conds(self):
        """With a text encoder on the model (sd_hijack_clip's stand-in), the prompts are encoded
        here, after process_batch, as the webui does; otherwise the given tensors are kept."""
        encoder = getattr(self.sd_model, "cond_stage_model", None)
        if encoder is not None:
            with torch.no_grad():
                self.cond = encoder([self.prompt])
                self.uncond = encoder([self.negative_prompt])

    def get_token_merging_ratio(self, for_hr=False):
        if for_hr:
            return (
                self.token_merging_ratio_hr
                or shared.opts.token_merging_ratio_hr
                or self.token_merging_ratio
                or shared.opts.token_merging_ratio
            )
        return self.token_merging_ratio or shared.opts.token_merging_ratio


def torch_unet(sd_model):
    """The torch UNet module: A1111's `model.diffusion_model`; in the Forge stand-in, what its
    KModel holds under whatever object sd-ov patched in (ForgeDiffusionModel, Optimize's route)."""
    forge = getattr(sd_model, "forge_objects", None)
    if forge is None:
        return sd_model.model.diffusion_model
    held = forge.unet.model.diffusion_model
    return vars(held).get("torch_unet") or held


def encode_prompt(sd_model, text):
    """Stand-in of the text encoder: a fixed embedding per prompt (the tiny models have no CLIP)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    unet = torch_unet(sd_model)
    width = next(m.to_k.in_features for name, m in unet.named_modules() if name.endswith("attn2"))
    return torch.randn(1, 77, width, generator=torch.Generator().manual_seed(seed))


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    """The real class's keyword arguments (the ones sd-ov passes); prompts go through a stand-in
    text encoder."""

    def __init__(
        self,
        sd_model=None,
        prompt="",
        negative_prompt="",
        seed=-1,
        sampler_name=None,
        steps=50,
        width=512,
        height=512,
        cfg_scale=7.0,
        batch_size=1,
        n_iter=1,
        do_not_save_samples=False,
        do_not_save_grid=False,
        override_settings=None,
        override_settings_restore_afterwards=True,
        enable_hr=False,
        **kwargs,
    ):
        super().__init__(
            sd_model,
            encode_prompt(sd_model, prompt),
            encode_prompt(sd_model, negative_prompt) * 0.5,
            width=width,
            height=height,
            steps=steps,
            seed=seed,
            override_settings=override_settings,
            cfg_scale=cfg_scale,
        )
        self.prompt = prompt
        self.sampler_name = sampler_name
        self.override_settings_restore_afterwards = override_settings_restore_afterwards
        self.enable_hr = enable_hr


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """img2img: its init picture ([-1, 1], [1, 3, H, W]) is encoded in `init`, which the webui
    calls in process_images_inner after the scripts' `process` and before apply_unet and the batch
    hooks (sd_samplers_common.images_tensor_to_samples → first_stage_model.encode → a sample of
    the posterior, times the scale factor)."""

    def __init__(self, sd_model, cond, uncond, init_image, denoising_strength=0.6, **kwargs):
        super().__init__(sd_model, cond, uncond, **kwargs)
        self.init_image = init_image
        self.denoising_strength = denoising_strength

    def init(self, all_prompts=None, all_seeds=None, all_subseeds=None):
        torch.manual_seed(self.seed)  # the posterior's sample: the same draw for every job
        posterior = self.sd_model.first_stage_model.encode(self.init_image)
        self.init_latent = posterior.sample() * 0.18215


class Processed:
    def __init__(self, p, latent, infotexts):
        self.latent = latent
        self.images = [Image.fromarray(latent_to_image(latent[0]))]  # stand-in of the VAE decode
        self.infotexts = infotexts
        self.extra_generation_params = dict(p.extra_generation_params)


def quote(text):
    """modules/infotext_utils.quote: values with a comma, colon or newline are JSON strings."""
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def create_infotext(p):
    params = {"Steps": p.steps, "Sampler": "Euler", "Seed": p.seed, "Size": f"{p.width}x{p.height}"}
    params.update(p.extra_generation_params)
    return ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    opts = shared.opts
    stored_opts = {
        k: opts.data[k] if k in opts.data else opts.get_default(k)
        for k in p.override_settings
        if k in opts.data
    }
    try:
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
        res = process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)
    return res


def process_images_inner(p):
    """As the webui's: tiling set on the model's convolutions first, the scripts' `process` hook
    outside `no_grad`, everything from `p.init` on inside it."""
    from modules import sd_hijack

    sd_hijack.model_hijack.apply_circular(p.tiling)
    if p.scripts is not None:
        p.scripts.process(p)
    shared.state.job = "txt2img"
    with torch.no_grad():
        return _sample_and_decode(p)


def _sample_and_decode(p):
    from modules import sd_vae_approx

    p.init()
    # as the webui's: the live-preview decoder is loaded (downloaded the first time) before sampling
    if shared.opts.live_previews_enable and shared.opts.show_progress_type == "Approx NN":
        sd_vae_approx.model()
    sd_unet.apply_unet()
    if p.scripts is not None:
        p.scripts.process_batch(p, batch_number=0)
    p.setup_conds()
    forge = getattr(p.sd_model, "forge_objects", None)
    if forge is not None:  # Forge: its KModel calls `diffusion_model` with keywords

        def unet(x, t, context):
            return forge.unet.model.apply_model(x, t, c_crossattn=context)

        channels = torch_unet(p.sd_model).in_channels
    else:
        unet = p.sd_model.model.diffusion_model
        channels = unet.in_channels
    gen = torch.Generator().manual_seed(p.seed)
    noise = torch.randn(1, channels, p.height // 8, p.width // 8, generator=gen)
    if p.init_latent is not None:  # img2img: sampling starts from the encoded picture, noised
        noise = p.init_latent + noise * p.denoising_strength

    # sd_samplers_cfg_denoiser: "Ignore negative prompt during early sampling" skips the negative
    # half while step / steps <= it (1: every step) and puts the prompt's output in its place
    skip_uncond = float(shared.opts.skip_early_cond) >= 1.0

    def denoise(x, t, c):
        if skip_uncond:
            half = x.shape[0] // 2
            out = unet(x[:half], t[:half], context=c[:half])
            return torch.cat([out, out])
        return unet(x, t, context=c)

    result = sample_euler(denoise, noise, p.cond, p.uncond, steps=p.steps, cfg_scale=p.cfg_scale)
    if p.enable_hr:  # txt2img's hires fix: upscale the latent, then a second sampling pass
        if p.scripts is not None:
            p.scripts.before_hr(p)
        h, w = int(p.height * p.hr_scale) // 8, int(p.width * p.hr_scale) // 8
        upscaled = torch.nn.functional.interpolate(result.latent, size=(h, w), mode="nearest")
        hr_noise = torch.randn(upscaled.shape, generator=gen) * 0.3 + upscaled / 14.6
        result = sample_euler(denoise, hr_noise, p.cond, p.uncond, steps=p.hr_second_pass_steps or p.steps)
    if p.scripts is not None:
        from modules import scripts

        ps = scripts.PostSampleArgs(result.latent)
        p.scripts.post_sample(p, ps)
    decoded = None
    first_stage = getattr(p.sd_model, "first_stage_model", None)
    if getattr(shared.opts, "sd_vae_decode_method", "Full") == "TAESD":  # samples_to_images_tensor, 3
        from modules import sd_vae_taesd

        decoded = sd_vae_taesd.decoder_model()(result.latent).detach() * 2 - 1
    elif first_stage is not None:  # sd_samplers_common.samples_to_images_tensor → decode_first_stage
        decoded = first_stage.decode(result.latent / 0.18215)
    if p.scripts is not None:
        p.scripts.postprocess_batch(p, result.latent, batch_number=0)
    processed = Processed(p, result.latent, [create_infotext(p)])
    processed.decoded = decoded
    processed.init_latent = p.init_latent
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed
