"""The original prototype's Python API, kept and fixed:

ed = easy_diffuser.start("image.jpg")
ed.run()
ed.print_caption()
ed.input_img("other.jpg")
ed.send2ui()          # POST prompt and negative_prompt to a running webui's /sdapi/v1/txt2img

easy_diffuser.start("image.jpg", caption=True)   # BLIP's caption first, then the tags
easy_diffuser.start("image.jpg", caption={"model": "microsoft/git-base-coco", "max_length": 20})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .devices import default_device
from .engine import Engine, Extraction, ExtractOptions
from .images import ImageInput, load_image
from .models import DEFAULT_MODEL
from .webui_client import DEFAULT_URL, save_images, txt2img


class EasyDiffuser:
    def __init__(
        self,
        image: ImageInput | None = None,
        model: str = DEFAULT_MODEL,
        device: str | None = None,
        caption: Any = None,
        **options: Any,
    ) -> None:
        self.options = ExtractOptions.from_mapping(
            {**options, "caption": caption}
        )  # bad options fail before the model loads
        self.engine = Engine(model, device or default_device())
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
    image: ImageInput | None = None,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    caption: Any = None,
    **options: Any,
) -> EasyDiffuser:
    """Load a model (once per process) and take an image; call .run() to extract.

    options: the ExtractOptions fields (max_tags=16, weights=True, ...), checked before the model loads.
    caption: True, a captioner (captioner.CAPTIONERS id or model folder), or a dict / CaptionOptions
    with model, beams, min_length and max_length puts its caption in front of the tags.
    """
    return EasyDiffuser(image, model, device, caption, **options)
