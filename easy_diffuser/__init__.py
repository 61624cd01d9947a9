"""Easy Diffuser: images -> Stable Diffusion prompts (positive and negative) with CLIP or a WD tagger.

Try it offline with the tiny model shipped in the package:

    import easy_diffuser
    ed = easy_diffuser.start("image.jpg", model="shapes-demo")
    ed.run()
    ed.print_caption()
"""

from .engine import Engine, Extraction, ExtractOptions
from .errors import ModelError
from .images import ImageError
from .options import CaptionFileOptions, CaptionOptions, OptionError
from .registry import list_models
from .session import EasyDiffuser, start
from .webui_client import WebuiError

__all__ = [
    "CaptionFileOptions",
    "CaptionOptions",
    "EasyDiffuser",
    "Engine",
    "ExtractOptions",
    "Extraction",
    "ImageError",
    "ModelError",
    "OptionError",
    "WebuiError",
    "list_models",
    "start",
]
__version__ = "0.1.0"
