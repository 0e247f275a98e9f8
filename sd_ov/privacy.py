"""Prompts and models stay on the machine: OpenVINO's and NNCF's usage telemetry is off in any
process that uses sd-ov.

Both send through `openvino_telemetry`, and both create it with the consent dialog turned off,
which makes "no consent file" count as consent. Outside CI that is every fresh install, so a
user's conversion and quantization runs would report home unless they had run `opt_in_out
--opt_out`. We make the consent check answer "declined" for this process, before NNCF or the
converter read it, and turn off an instance that already exists. The user's own consent file is
left as it is.
"""

from __future__ import annotations

import logging

log = logging.getLogger("sd_ov")


def telemetry_off() -> bool:
    """Decline telemetry for this process; True when openvino_telemetry is installed (and now off)."""
    try:
        from openvino_telemetry import main as telemetry_main
        from openvino_telemetry.utils import opt_in_checker
    except ImportError:  # nothing can send
        return False

    def declined(self, enable_opt_in_dialog=False, disable_in_ci=False):
        return opt_in_checker.ConsentCheckResult.DECLINED

    opt_in_checker.OptInChecker.check = declined
    instance = getattr(telemetry_main.Telemetry, "_SingletonMetaClass__single_instance", None)
    if instance is not None:
        instance.consent = False
    return True
