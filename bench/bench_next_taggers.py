"""PixAI v0.9 and JTP PILOT2 beside WD EVA02-L (the largest WD tagger the project already runs), on this machine's
CPU, side by side in one run, through the engine's own path (`LoadedTagger.probabilities`: pairs of images on a CPU,
oneDNN's matrix products).

The networks are the kinds' own (kinds/pixai.py `network`, kinds/jtp.py `network`, kinds/timm_network.py for WD)
with random weights at the real width, input size and head (13,461 tags and 1,000 copyrights; 9,083 gated; 10,861):
they time the same as trained ones, and nothing is downloaded. `--depth` keeps that many transformer blocks (all
three at the same depth) where a shared CPU is too slow for the real 24 and 27: a block's time is the same at any
depth, so the ratios hold; the seconds are then those of the shallower networks.

    python bench/bench_next_taggers.py                 # real sizes (EVA02-L 24 blocks at 448 px, SO400M 27 at 384)
    python bench/bench_next_taggers.py --depth 4       # a busy 2-core CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from easy_diffuser.kinds import jtp, pixai  # noqa: E402
from easy_diffuser.kinds.timm_network import build_network  # noqa: E402
from easy_diffuser.kinds.wd_tagger import LoadedTagger, TagTable  # noqa: E402

WD_TAGS, PIXAI_TAGS, JTP_TAGS = 10_861, 13_461, 9_083
COPYRIGHTS = 1_000  # about as many as char_ip_map.json's characters name


def loaded(name: str, model: torch.nn.Module, size: int, tags: int, cls: type = LoadedTagger) -> LoadedTagger:
    table = TagTable(tuple(f"tag_{index}" for index in range(tags)), ("general",) * tags)
    return cls(name, model.eval(), None, table, size, {}, name)


def with_copyrights(network: torch.nn.Module) -> torch.nn.Module:
    """PixAI's 3,720 characters, each giving one of COPYRIGHTS (the real map's size order), as the kind wraps it."""
    characters = range(PIXAI_TAGS - 3_720, PIXAI_TAGS)
    return pixai.WithCopyrights(network, [(c, c % COPYRIGHTS) for c in characters], COPYRIGHTS)


def taggers(depth: int | None) -> dict[str, LoadedTagger]:
    deeper = {"depth": depth} if depth else {}
    eva = {**pixai.WD_EVA02_LARGE, "model_args": {**pixai.WD_EVA02_LARGE["model_args"], **deeper}}
    so400m = {**jtp.SO400M, "model_args": {**jtp.SO400M["model_args"], **deeper}}
    torch.manual_seed(0)
    return {
        "WD EVA02-L": loaded("wd", build_network({**eva, "num_classes": WD_TAGS}, Path("wd")), 448, WD_TAGS),
        "PixAI v0.9": loaded(
            "pixai", with_copyrights(pixai.network(eva, PIXAI_TAGS, Path("pixai"))), 448, PIXAI_TAGS + COPYRIGHTS
        ),
        "JTP PILOT2": loaded("jtp", jtp.network(so400m, JTP_TAGS, Path("jtp")), 384, JTP_TAGS, jtp.LoadedJtp),
    }


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=None, help="transformer blocks of each (default: the real ones)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each, interleaved; the median counts")
    args = parser.parse_args()
    models = taggers(args.depth)
    batches = {
        name: torch.rand(args.batch, 3, tagger.image_size, tagger.image_size) * 2 - 1 for name, tagger in models.items()
    }
    for name, tagger in models.items():  # warm-up: oneDNN's first call plans its kernels
        tagger.probabilities(batches[name])
    timed: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeat):  # interleaved: a shared CPU's load comes and goes for all
        for name, tagger in models.items():
            timed[name].append(seconds(lambda: tagger.probabilities(batches[name])))
    depth = f"{args.depth} blocks each (real: 24, 24, 27)" if args.depth else "real depth"
    print(
        f"CPU, torch {torch.__version__} ({torch.get_num_threads()} threads), batch {args.batch}, {depth}, "
        f"median of {args.repeat}\n"
    )
    reference = statistics.median(timed["WD EVA02-L"])
    print(f"{'tagger':<12} {'params':>8} {'px':>4} {'s/image':>8}  time / WD EVA02-L's")
    for name, tagger in models.items():
        median = statistics.median(timed[name])
        parameters = sum(p.numel() for p in tagger.model.parameters()) / 1e6
        per_image = median / args.batch
        print(f"{name:<12} {parameters:>7.0f}M {tagger.image_size:>4} {per_image:>8.2f}  {median / reference:.2f}")


if __name__ == "__main__":
    main()
