"""Stand-in for modules/processing.py: txt2img whose "model" is the shapes-world renderer.

The fields are the real StableDiffusionProcessing's (in order, with their defaults) up to the ones
the extension sets; process_images draws what the prompt names and avoids what the negative prompt
names, seeded, so a calibration on it measures something. As the real one, it makes no image once
shared.state.interrupted is set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from easy_diffuser.shapes import world
from modules import shared

calls: list[StableDiffusionProcessing] = []  # every process_images call, for the tests to count


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list[str] = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    scripts: object = field(default=None, init=False)  # the real one's is a property, set after construction

    def close(self):
        pass


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False


class Processed:
    def __init__(
        self,
        p: StableDiffusionProcessing,
        images_list,
        seed=-1,
        info="",
        subseed=None,
        all_prompts=None,
        all_negative_prompts=None,
        all_seeds=None,
        all_subseeds=None,
        index_of_first_image=0,
        infotexts=None,
        comments="",
    ):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed


def process_images(p: StableDiffusionProcessing) -> Processed:
    calls.append(p)
    p.scripts.alwayson_scripts  # as reForge's process_images_inner reads them (A1111 checks for None first)
    if shared.state.interrupted:  # the real loop breaks before sampling: no image
        return Processed(p, [], p.seed)
    scene = world.scene_from_prompt(p.prompt, p.negative_prompt, random.Random(p.seed))
    return Processed(p, [world.draw(scene, p.width)], p.seed)
