import os
import tempfile

models_path = os.environ.get("SD_OV_STUB_MODELS", os.path.join(tempfile.gettempdir(), "sd_ov_stub_models"))
script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
