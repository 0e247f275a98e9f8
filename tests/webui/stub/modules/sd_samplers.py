"""Stand-in of modules/sd_samplers.py: the stand-in processing runs Euler whatever is chosen."""


def visible_sampler_names():
    return ["Euler", "Euler a", "DPM++ 2M"]
