"""Image generators for the round trip extract -> generate -> compare, behind one small interface.

    generator.generate(prompt, negative_prompt, seed) -> PIL.Image

* ShapesGenerator: the shapes-world renderer; draws what the prompt names, picks an attribute the
  prompt leaves open at random among the values the negative prompt does not name.
* WebuiHttpGenerator: txt2img on a running webui (`--api`), through the same client as send2ui.
* CallableGenerator: wraps any function; the webui tab uses it for in-process generation
  (`webui_generator` builds that function from the webui's own modules, passed in as arguments,
  so this package never imports webui code).

Every generator is deterministic for a fixed seed, so calibration settings that produce the same
prompts produce the same image and can share one generation.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Protocol

from PIL import Image

from .. import webui_client
from ..images import ImageError, load_image

GenerateFn = Callable[[str, str, int], Image.Image]


class GenerationStopped(RuntimeError):
    """The host interrupted generation (the webui's Stop/Interrupt); calibration saves and stops."""


class Generator(Protocol):
    name: str  # identifies the generator in calibration files and caches

    def generate(self, prompt: str, negative_prompt: str, seed: int) -> Image.Image: ...


@dataclass
class ShapesGenerator:
    """The shapes world: a good negative prompt changes the picture, a wrong one hurts it."""

    pixels: int = 64
    name: str = "shapes"

    def generate(self, prompt: str, negative_prompt: str, seed: int) -> Image.Image:
        from ..shapes import world  # only this generator needs the shapes world

        rng = random.Random(seed)
        return world.draw(world.scene_from_prompt(prompt, negative_prompt, rng), self.pixels)


@dataclass
class WebuiHttpGenerator:
    """txt2img over HTTP; small and few steps by default, since calibration runs many generations. `timeout` bounds
    each generation as a whole, and its answer is read only up to what one image of its size can take."""

    url: str = webui_client.DEFAULT_URL
    width: int = 256
    height: int = 256
    steps: int = 12
    cfg_scale: float = 7.0
    sampler_name: str | None = None  # None: the webui's default sampler
    timeout: float = 600
    name: str = field(init=False)

    def __post_init__(self) -> None:
        try:
            webui_client.check_url(self.url)
        except webui_client.WebuiError as error:  # a setting given wrong, found before any work: a ValueError
            raise ValueError(str(error)) from None
        # The cache key must change when the picture would: url and the generation settings.
        self.name = f"{self.url.rstrip('/')} {self.width}x{self.height} steps={self.steps} cfg={self.cfg_scale:g}"
        if self.sampler_name:
            self.name += f" sampler={self.sampler_name}"

    def generate(self, prompt: str, negative_prompt: str, seed: int) -> Image.Image:
        options: dict[str, Any] = dict(
            seed=seed,
            width=self.width,
            height=self.height,
            steps=self.steps,
            cfg_scale=self.cfg_scale,
            batch_size=1,
            n_iter=1,
            save_images=False,
            send_images=True,
        )
        if self.sampler_name:
            options["sampler_name"] = self.sampler_name
        limit = webui_client.answer_bytes(self.width, self.height)
        images = webui_client.txt2img(prompt, negative_prompt, self.url, self.timeout, limit, **options)
        if not images:
            raise webui_client.WebuiError(f"{self.url}: txt2img answered no image (interrupted?)")
        try:  # as a user's image is: raster formats only (an EPS would run Ghostscript), bombs refused
            return load_image(images[0], f"the image {self.url} answered")
        except ImageError as error:
            raise webui_client.WebuiError(str(error)) from None


@dataclass
class CallableGenerator:
    """Any function (prompt, negative_prompt, seed) -> PIL image, e.g. the webui's in-process txt2img."""

    function: GenerateFn
    name: str

    def generate(self, prompt: str, negative_prompt: str, seed: int) -> Image.Image:
        return self.function(prompt, negative_prompt, seed).convert("RGB")


def webui_generator(
    processing: Any,
    shared: Any,
    scripts: Any,
    width: int = 256,
    height: int = 256,
    steps: int = 12,
    cfg_scale: float = 7.0,
    sampler_name: str = "Euler a",
    queue_lock: ContextManager | None = None,
    save: bool = False,
) -> CallableGenerator:
    """In-process txt2img with the webui's loaded checkpoint, for the tab.

    `processing`, `shared` and `scripts` are those `modules` of the webui, passed in by webui/host.py so
    this module stays free of webui imports. Each image runs without the extensions' scripts (an empty
    ScriptRunner: A1111 takes None for one, reForge does not). Pass `queue_lock=modules.call_queue.queue_lock`
    when the caller does not already hold the queue (a handler wrapped with wrap_gradio_gpu_call does: then
    leave it None, A1111's lock is not re-entrant). Images are not saved to the user's outputs unless `save`.
    Interrupt (shared.state.interrupted) raises GenerationStopped.
    """

    def generate(prompt: str, negative_prompt: str, seed: int) -> Image.Image:
        if shared.state.interrupted:
            raise GenerationStopped("interrupted")
        with queue_lock or contextlib.nullcontext():
            p = processing.StableDiffusionProcessingTxt2Img(
                sd_model=shared.sd_model,
                prompt=prompt,
                negative_prompt=negative_prompt,
                seed=seed,
                sampler_name=sampler_name,
                batch_size=1,
                n_iter=1,
                steps=steps,
                cfg_scale=cfg_scale,
                width=width,
                height=height,
                do_not_save_samples=not save,
                do_not_save_grid=True,
            )
            p.scripts = scripts.ScriptRunner()  # not a constructor field: a property of the webui's
            with contextlib.closing(p):
                processed = processing.process_images(p)
        if shared.state.interrupted or not processed.images:
            raise GenerationStopped("interrupted")
        return processed.images[0]

    checkpoint = getattr(getattr(shared, "sd_model", None), "sd_checkpoint_info", None)
    label = getattr(checkpoint, "name_for_extra", None) or getattr(checkpoint, "title", "current checkpoint")
    name = f"webui {label} {width}x{height} steps={steps} cfg={cfg_scale:g} sampler={sampler_name}"
    return CallableGenerator(generate, name)


def make_generator(spec: str, width: int = 256, height: int = 256, steps: int = 12) -> Generator:
    """The CLI's --generator: "shapes", "shapes-cooccur", "webui" (the default URL) or the URL of a running webui."""
    if spec == "shapes":
        return ShapesGenerator()
    if spec == "shapes-cooccur":
        from ..shapes.cooccur import CooccurGenerator  # the co-occurrence world's generator (cooccur_proof.py)

        return CooccurGenerator()
    if spec == "webui" or spec.startswith(("http://", "https://")):
        return WebuiHttpGenerator(webui_client.DEFAULT_URL if spec == "webui" else spec, width, height, steps)
    raise ValueError(
        f"unknown generator {spec!r}: use 'shapes', 'shapes-cooccur', 'webui' or a webui URL such as "
        f"{webui_client.DEFAULT_URL}"
    )
