"""Re-selection speed: what the tab does when a control moves (select again from the stored image
embedding) beside what Extract does (the image through CLIP, then the same selection), in one run.

The shipped vocabulary (3,770 tags) with random unit-length text embeddings of ViT-B-32's width
(512) stands in for a real model's: selection's cost depends on the number of tags and the width,
not on what the numbers mean. The Extract column runs a randomly initialised ViT-B-32 image tower.

    python bench/bench_reselect.py
    python bench/bench_reselect.py --arch ViT-L-14 --repeat 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from easy_diffuser import embedding  # noqa: E402
from easy_diffuser.engine import Engine  # noqa: E402
from easy_diffuser.kinds.clip_loading import open_clip_module  # noqa: E402
from easy_diffuser.options import ExtractOptions  # noqa: E402
from easy_diffuser.presence import TagCalibration  # noqa: E402
from easy_diffuser.vocabulary import BUILTIN_DIR, load_vocabulary  # noqa: E402
from easy_diffuser.webui import controls  # noqa: E402

TAB = {
    "max_tags": 24,
    "auto_tau": False,
    "tau": 1.0,
    "negatives": 8,
    "quality_negatives": 6,
    "general_threshold": 0.35,
    "character_threshold": 0.85,
    "general_mcut": False,
    "character_mcut": False,
    "family": "automatic",
    "exclude_tags": "",
    "first_tags": "",
    "weights": False,
    "caption": False,
    "caption_model": "",
    "prompt_style": "tags",
}


def median_ms(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    clip = open_clip_module().create_model(args.arch).eval()
    width = clip.text_projection.shape[1]

    engine = Engine("shapes-demo")  # a real Engine, given the shipped vocabulary at the model's width
    clip_scorer = engine.scorer
    clip_scorer.vocabulary = load_vocabulary([BUILTIN_DIR])
    clip_scorer.text_embeddings = torch.nn.functional.normalize(torch.randn(len(engine.vocabulary), width), dim=-1)
    clip_scorer.twins = clip_scorer.text_embeddings
    tokens = embedding.tokenize(engine.loaded, engine.vocabulary.tags)
    clip_scorer.token_costs = (embedding.token_lengths(tokens) - 2).tolist()
    # A real CLIP's tag probabilities (the built-in default), not shapes-demo's fit to its 13-tag world.
    engine.tag_calibration = TagCalibration()
    image_embedding = torch.nn.functional.normalize(torch.randn(1, width), dim=-1)
    extracted = controls._selected(engine, image_embedding, ExtractOptions(), [])

    pixels = torch.randn(1, 3, clip.visual.image_size[0], clip.visual.image_size[1])
    sizes = [1, 12, 24, 48, 75]  # the Number of tags slider moving
    options = [controls.extract_options({**TAB, "max_tags": size}) for size in sizes]

    def reselect() -> None:
        for option in options:
            controls.reselect(engine, extracted, option)

    def extract() -> None:
        with torch.no_grad():
            encoded = torch.nn.functional.normalize(clip.encode_image(pixels).float(), dim=-1)
        controls._selected(engine, encoded, options[0], [])

    reselect()  # warm-up
    reselect_ms = median_ms(reselect, args.repeat) / len(options)
    extract_ms = median_ms(extract, max(3, args.repeat // 10))
    print(f"\n{len(engine.vocabulary)} tags, width {width} ({args.arch}), CPU ({torch.get_num_threads()} threads)\n")
    print(f"| {'measure':<44} | {'ms':>8} | notes")
    print(f"|{'-' * 46}|{'-' * 10}|------")
    verdict = "met" if reselect_ms < 50 else "MISSED"
    print(f"| {'re-selection (a control moved)':<44} | {reselect_ms:>8.1f} | target < 50 ms: {verdict}")
    print(
        f"| {'Extract (image through ' + args.arch + ', then selection)':<44} | {extract_ms:>8.1f} | "
        f"{extract_ms / reselect_ms:.0f}x the re-selection"
    )


if __name__ == "__main__":
    main()
