"""Easy Diffuser: images -> Stable Diffusion prompts (positive and negative) with CLIP or a WD tagger.

Try it offline with the tiny model shipped in the package:

    import easy_diffuser
    ed = easy_diffuser.start("image.jpg", model="shapes-demo")
    ed.run()
    ed.print_caption()
"""

from __future__ import annotations

import importlib
from typing import Any

# Each name from its module on first use: importing the package (the dataset command, the options schema)
# does not import torch.
_MODULES = {
    "CaptionFileOptions": "options",
    "CaptionOptions": "options",
    "EasyDiffuser": "session",
    "Engine": "engine",
    "ExtractOptions": "engine",
    "Extraction": "engine",
    "ImageError": "images",
    "ModelError": "errors",
    "OptionError": "options",
    "WebuiError": "webui_client",
    "list_models": "registry",
    "start": "session",
}
__all__ = list(_MODULES)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value
