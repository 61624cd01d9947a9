"""Easy Diffuser: images -> Stable Diffusion prompts (positive and negative) with CLIP.

    import easy_diffuser
    ed = easy_diffuser.start("image.jpg", model="shapes-demo")
    ed.run()
    ed.print_caption()
"""
from .engine import Engine, ExtractOptions, Extraction
from .images import ImageError
from .models import ModelError, list_models
from .session import EasyDiffuser, start

__all__ = ["EasyDiffuser", "Engine", "ExtractOptions", "Extraction", "ImageError", "ModelError", "list_models", "start"]
__version__ = "0.1.0"
