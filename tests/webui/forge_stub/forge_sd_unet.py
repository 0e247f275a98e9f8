"""Forge's `modules/sd_unet.apply_unet` (dfdcbab6): A1111's, less the moves of
`sd_model.model.diffusion_model` (Forge's model object has no `.model`; its memory manager moves
the UNet). The tests put it in place of the A1111 stand-in's in `modules.sd_unet`."""

from modules import sd_unet


def apply_unet(option=None):
    new_option = sd_unet.get_unet_option(option)
    if new_option == sd_unet.current_unet_option:
        return
    if sd_unet.current_unet is not None:
        print(f"Dectivating unet: {sd_unet.current_unet.option.label}")
        sd_unet.current_unet.deactivate()
    sd_unet.current_unet_option = new_option
    if sd_unet.current_unet_option is None:
        sd_unet.current_unet = None
        return
    sd_unet.current_unet = sd_unet.current_unet_option.create_unet()
    sd_unet.current_unet.option = sd_unet.current_unet_option
    print(f"Activating unet: {sd_unet.current_unet.option.label}")
    sd_unet.current_unet.activate()
