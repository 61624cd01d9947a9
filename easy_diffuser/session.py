"""The original prototype's Python API, kept and fixed:

    ed = easy_diffuser.start("image.jpg")
    ed.run()
    ed.print_caption()
    ed.input_img("other.jpg")
    ed.send2ui()          # POST prompt and negative_prompt to a running webui's /sdapi/v1/txt2img

    easy_diffuser.start("image.jpg", caption=True)   # BLIP's caption first, then the tags
    easy_diffuser.start("image.jpg", caption="microsoft/git-base-coco", caption_max_length=20)
"""
from __future__ import annotations

from pathlib import Path

import torch

from .captioner import DEFAULT_CAPTIONER
from .engine import Engine, ExtractOptions, Extraction
from .images import ImageInput, load_image
from .models import DEFAULT_MODEL
from .webui_client import DEFAULT_URL, save_images, txt2img


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def captioner_spec(caption: str | bool | None) -> str | None:
    """caption=True means the default captioner; False or None, none."""
    return DEFAULT_CAPTIONER if caption is True else caption or None


class EasyDiffuser:
    def __init__(
        self, image: ImageInput | None = None, model: str = DEFAULT_MODEL, device: str | None = None, caption: str | bool | None = None, **options
    ) -> None:
        self.engine = Engine(model, device or default_device())
        self.options = ExtractOptions(caption=captioner_spec(caption), **options)
        self.image = None
        self.result: Extraction | None = None
        if image is not None:
            self.input_img(image)

    def input_img(self, image: ImageInput) -> None:
        """Take a new image (path, bytes or PIL image); the last result is dropped."""
        self.image = load_image(image)
        self.result = None

    def run(self) -> Extraction:
        if self.image is None:
            raise ValueError("no image yet: call input_img(path) first")
        self.result = self.engine.extract(self.image, self.options)
        return self.result

    @property
    def prompt(self) -> str:
        return self._result().prompt

    @property
    def negative_prompt(self) -> str:
        return self._result().negative_prompt

    def print_caption(self) -> None:
        print(f"Prompt: {self.prompt}\nNegative prompt: {self.negative_prompt}")

    def send2ui(self, url: str = DEFAULT_URL, out_dir: str | Path = "outputs", **txt2img_options) -> list[Path]:
        """Generate from the prompts with a webui started with --api; returns the saved images."""
        images = txt2img(self.prompt, self.negative_prompt, url=url, **txt2img_options)
        return save_images(images, out_dir)

    def _result(self) -> Extraction:
        return self.result if self.result is not None else self.run()


def start(
    image: ImageInput | None = None, model: str = DEFAULT_MODEL, device: str | None = None, caption: str | bool | None = None, **options
) -> EasyDiffuser:
    """Load a model (once per process) and take an image; call .run() to extract.

    caption: True or a captioner (captioner.CAPTIONERS id or model folder) puts its caption in
    front of the tags; caption_beams, caption_min_length, caption_max_length tune it.
    """
    return EasyDiffuser(image, model, device, caption, **options)
