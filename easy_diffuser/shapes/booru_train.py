"""Train shapes-booru, a tiny WD-style tagger for the shapes world, and write it in the WD hub layout.

    python -m easy_diffuser.shapes.booru_train [--steps N] [--seed S] [--out DIR]

The folder holds exactly what SmilingWolf's WD v3 repositories hold for timm: `config.json`
(`architecture`, `num_classes`, `model_args`, `pretrained_cfg`), `model.safetensors` (the timm
state dict, head included) and `selected_tags.csv` (`tag_id,name,category,count`). The network is
timm's own `convnext_base` (the architecture of wd-convnext-tagger-v3) shrunk through `model_args`
(64 px input, depths 1-1-2-1, widths 24-128). Only arguments timm 0.9.5 already takes are used. (A
ViT of this size, `vit_base_patch16_224` at 64 px with 8 px patches, learnt colour but not shape in
the same budget, as the shapes-demo trial found for CLIP.)

Training sees every image through the WD reference preprocessing (alpha on white, pad to a
centred white square, bicubic to the input size, [-1, 1], BGR), so the model works through any
loader that follows the reference. Fixed seed + fixed step count => the same weights on every
run on one machine; the tensor hash printed at the end identifies them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from easy_diffuser.booru import RATINGS
from easy_diffuser.shapes import world
from easy_diffuser.shapes.train import lr_factor, replace_folder, tensor_hash

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "shapes-booru"
ARCHITECTURE = "convnext_base"  # as wd-convnext-tagger-v3, shrunk through model_args
INPUT_SIZE = 64
# ls_init_value 1: timm's default layer scale (1e-6) starts every block as nothing, and this shallow a net
# then trains as stem and downsampling alone, which are linear: colour is learnt, shape is not.
MODEL_ARGS: dict[str, Any] = {"depths": [1, 1, 2, 1], "dims": [24, 48, 96, 128], "ls_init_value": 1.0}
# Shape is learnt last and slowest (area, which differs by shape, is a tempting shortcut); its tags weigh more.
SHAPE_WEIGHT = 4.0
GENERAL_THRESHOLD = 0.35  # WD's demo defaults, which the semantic figures are measured at
CHARACTER_THRESHOLD = 0.85

RATING, GENERAL, CHARACTER = 9, 0, 4
# The world's one character, a large yellow star: a tag that holds only for one combination of
# attributes, so the character threshold (0.85) has a meaning tests can check; its "_(series)"
# suffix is the Danbooru convention that prompt escaping must handle.
((MASCOT, MASCOT_LOOKS),) = world.CHARACTERS.items()


@dataclass(frozen=True)
class Tag:
    name: str
    category: int


def tag_list() -> list[Tag]:
    """selected_tags.csv's rows in order: the four ratings first (as in WD), then general, then character."""
    general = [*world.COLOURS, *world.SHAPES, *(f"{name}_background" for name in world.BACKGROUNDS), *world.SIZES]
    return [
        *(Tag(name, RATING) for name in RATINGS),
        *(Tag(name, GENERAL) for name in general),
        Tag(MASCOT, CHARACTER),
    ]


def is_mascot(scene: world.Scene) -> bool:
    return all(getattr(scene, key) == value for key, value in MASCOT_LOOKS.items())


def true_tags(scene: world.Scene) -> set[str]:
    """The tags that hold for a scene. Every shapes scene is rated general: the world has nothing else."""
    tags = {"general", scene.colour, scene.shape, f"{scene.background}_background", scene.size}
    return tags | {MASCOT} if is_mascot(scene) else tags


# --- the WD reference preprocessing -------------------------------------------


def reference_pixels(image: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """WD's steps up to the scaling: alpha on white, centred white square, bicubic; uint8 HxWx3 in BGR."""
    rgba = image.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat.alpha_composite(rgba)
    side = max(flat.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(flat.convert("RGB"), ((side - flat.width) // 2, (side - flat.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(square)[:, :, ::-1])


def to_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 NxHxWx3 (BGR) -> float NCHW in [-1, 1] (mean and std 0.5)."""
    return pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def reference_input(image: Image.Image, size: int = INPUT_SIZE) -> torch.Tensor:
    """One image as the tagger takes it: 1x3xSxS, BGR, [-1, 1]."""
    return to_input(torch.from_numpy(reference_pixels(image, size))[None])


# --- data ------------------------------------------------------------------------


def _framed(scene: world.Scene, rng: random.Random) -> Image.Image:
    """The scene as a user might crop it: square at a random size, or widened or heightened with its
    background (so the white padding of the preprocessing is seen in training, as WD's models see it)."""
    pixels = rng.choice((48, 64, 96, 128))
    image = world.draw(scene, pixels)
    if rng.random() < 0.85:
        return image
    extra = int(pixels * rng.uniform(0.1, 0.6))
    wide = rng.random() < 0.5
    size = (pixels + extra, pixels) if wide else (pixels, pixels + extra)
    canvas = Image.new("RGB", size, world.BACKGROUNDS[scene.background])
    offset = rng.randint(0, extra)
    canvas.paste(image, (offset, 0) if wide else (0, offset))
    return canvas


def _scene(rng: random.Random) -> world.Scene:
    """A random scene; one in eight is drawn as a near-mascot (yellow, or star, or large pinned) so the
    mascot and the scenes that look most like it are common enough to learn the difference."""
    if rng.random() < 0.125:
        pinned = dict(rng.sample(sorted(MASCOT_LOOKS.items()), rng.choice((2, 3))))
        return world.random_scene(rng, **pinned)
    return world.random_scene(rng)


def dataset(count: int, rng: random.Random, tags: list[Tag]) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 pixels N x S x S x 3, BGR after the reference preprocessing; multi-hot labels N x tags)."""
    index = {tag.name: i for i, tag in enumerate(tags)}
    pixels = np.empty((count, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    labels = torch.zeros(count, len(tags))
    for row in tqdm(range(count), desc="rendering", file=sys.stdout):
        scene = _scene(rng)
        pixels[row] = reference_pixels(_framed(scene, rng))
        labels[row, [index[name] for name in true_tags(scene)]] = 1.0
    return torch.from_numpy(pixels), labels


# --- model -------------------------------------------------------------------------


def config(num_classes: int) -> dict[str, Any]:
    """config.json in the layout of SmilingWolf's WD v3 repositories."""
    return {
        "architecture": ARCHITECTURE,
        "num_classes": num_classes,
        "num_features": MODEL_ARGS["dims"][-1],
        "global_pool": "avg",
        "model_args": MODEL_ARGS,
        "pretrained_cfg": {
            "custom_load": False,
            "input_size": [3, INPUT_SIZE, INPUT_SIZE],
            "fixed_input_size": False,
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "num_classes": num_classes,
            "pool_size": None,
            "first_conv": None,
            "classifier": None,
        },
    }


def new_model(num_classes: int) -> torch.nn.Module:
    import timm

    return timm.create_model(ARCHITECTURE, pretrained=False, num_classes=num_classes, **MODEL_ARGS)


def load_folder(folder: Path) -> tuple[torch.nn.Module, list[Tag]]:
    """The written folder read back the plain timm way (create_model + strict load), in eval mode."""
    with (folder / "selected_tags.csv").open(newline="") as handle:
        tags = [Tag(row["name"], int(row["category"])) for row in csv.DictReader(handle)]
    cfg = json.loads((folder / "config.json").read_text())
    import timm

    model = timm.create_model(
        cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"], **cfg["model_args"]
    )
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval(), tags


def train(
    steps: int, seed: int, scenes: int, batch_size: int = 64, lr: float = 2e-3
) -> tuple[torch.nn.Module, list[Tag], torch.Tensor]:
    """The trained model, its tags and each tag's count among the training scenes."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    # One thread: the order of float sums, and so the weights, may depend on the thread count.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(steps, seed, scenes, batch_size, lr)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(
    steps: int, seed: int, scenes: int, batch_size: int, lr: float
) -> tuple[torch.nn.Module, list[Tag], torch.Tensor]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tags = tag_list()
    pixels, labels = dataset(scenes, rng, tags)
    model = new_model(len(tags))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps))
    order = torch.Generator().manual_seed(seed)
    weights = torch.tensor([SHAPE_WEIGHT if tag.name in world.SHAPES else 1.0 for tag in tags])
    progress = tqdm(range(steps), desc="training", file=sys.stdout)
    for step in progress:
        rows = torch.randint(0, scenes, (batch_size,), generator=order)
        images = to_input(pixels[rows])
        flip = torch.rand(batch_size, generator=order) < 0.5  # mirror images: shapes stay shapes
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), labels[rows], weight=weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")
    return model.eval(), tags, labels.sum(0)


# --- evaluation ------------------------------------------------------------------


@torch.no_grad()
def probabilities(model: torch.nn.Module, images: list[Image.Image]) -> torch.Tensor:
    """Sigmoid of the logits for each image, preprocessed the reference way."""
    return torch.sigmoid(model(torch.cat([reference_input(image) for image in images])))


def selected(row: torch.Tensor, tags: list[Tag]) -> set[str]:
    """The positive tags at WD's default thresholds (general 0.35, character 0.85)."""
    limits = {GENERAL: GENERAL_THRESHOLD, CHARACTER: CHARACTER_THRESHOLD}
    return {tag.name for tag, p in zip(tags, row.tolist()) if tag.category in limits and p >= limits[tag.category]}


@torch.no_grad()
def evaluate(model: torch.nn.Module, tags: list[Tag], count: int, seed: int, pixels: int) -> dict[str, float]:
    """Held-out scenes (a seed training never used), square at `pixels`, plus every mascot look-alike."""
    rng = random.Random(seed)
    scenes = [world.random_scene(rng) for _ in range(count)]
    hits = {"colour": 0, "shape": 0, "both": 0, "background": 0, "size": 0, "exact": 0}
    mascot = {"tp": 0, "fn": 0, "fp": 0}
    for start in range(0, count, 200):
        chunk = scenes[start : start + 200]
        for scene, row in zip(chunk, probabilities(model, [world.draw(s, pixels) for s in chunk])):
            positive = selected(row, tags)
            truth = true_tags(scene) - {"general"}
            found = {key: value in positive for key, value in _attributes(scene).items()}
            for key in ("colour", "shape", "background", "size"):
                hits[key] += found[key]
            hits["both"] += found["colour"] and found["shape"]
            hits["exact"] += positive == truth
            key = ("tp" if MASCOT in positive else "fn") if is_mascot(scene) else ("fp" if MASCOT in positive else "")
            if key:
                mascot[key] += 1
    result = {f"{key}": value / count for key, value in hits.items()}
    result["mascot_recall"] = mascot["tp"] / max(1, mascot["tp"] + mascot["fn"])
    result["mascot_false_positives"] = mascot["fp"]
    result["mascots"] = mascot["tp"] + mascot["fn"]
    return result


def _attributes(scene: world.Scene) -> dict[str, str]:
    return {
        "colour": scene.colour,
        "shape": scene.shape,
        "background": f"{scene.background}_background",
        "size": scene.size,
    }


# --- writing the folder ------------------------------------------------------------


def _write_folder(model: torch.nn.Module, tags: list[Tag], counts: torch.Tensor, folder: Path) -> dict:
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "model.safetensors").chmod(0o644)  # safetensors writes it private
    (folder / "config.json").write_text(json.dumps(config(len(tags)), indent=4) + "\n")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["tag_id", "name", "category", "count"])
    for tag_id, (tag, count) in enumerate(zip(tags, counts.tolist())):
        writer.writerow([tag_id, tag.name, tag.category, int(count)])
    (folder / "selected_tags.csv").write_text(text.getvalue())
    return state


def results_table(results: dict[int, dict[str, float]]) -> str:
    lines = [
        "| pixels | colour | shape | colour and shape | background | size | exactly the true tags "
        f"| {MASCOT} recall | {MASCOT} false positives |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pixels, r in results.items():
        lines.append(
            f"| {pixels} | {r['colour']:.3f} | {r['shape']:.3f} | {r['both']:.3f} | {r['background']:.3f} "
            f"| {r['size']:.3f} | {r['exact']:.3f} | {r['mascot_recall']:.3f} ({r['mascots']:.0f} scenes) "
            f"| {r['mascot_false_positives']:.0f} |"
        )
    return "\n".join(lines)


def _readme(command: str, seconds: float, table: str, digest: str, count: int, seed: int, parameters: int) -> str:
    return f"""# shapes-booru: a tiny WD-style tagger for the shapes world

A {parameters / 1e6:.2f}M-parameter timm `{ARCHITECTURE}` shrunk through `model_args` (64 px input,
depths 1-1-2-1, widths 24-48-96-128, layer scale 1) trained from scratch with a
sigmoid head on `easy_diffuser.shapes.world`: one red/green/blue/yellow circle/square/triangle/star,
small or large, on a white/black/gray background. Its folder has exactly the layout of
SmilingWolf's WD v3 taggers, so it exercises the real tagger loading and preprocessing offline.
It knows nothing outside this world.

- `config.json`: timm `architecture`, `num_classes`, `model_args`, `pretrained_cfg` (3x64x64,
  bicubic, mean and std 0.5), as in the WD v3 repositories.
- `model.safetensors`: the timm state dict in fp32, head included (tensor hash `{digest}`).
- `selected_tags.csv`: `tag_id,name,category,count`; the ratings general/sensitive/questionable/
  explicit first (category 9; every shapes scene is rated general), the 13 attributes in booru
  spelling (category 0: `red`, `circle`, `gray_background`, `large`, ...) and one character
  (category 4): `{MASCOT}`, a large yellow star, so the character threshold has a meaning.
  `count`: the tag's scenes among the training images.

Made with (CPU, {seconds:.0f} s including rendering, reproducible for a fixed seed and step count):

    {command}

Every training image went through the WD reference preprocessing (alpha on white, pad to a
centred white square, bicubic to 64, [-1, 1], BGR); 15% were widened or heightened with their
background so the white padding is part of what the model has seen.

Held-out scenes ({count} per size, `random.Random({seed})`, a seed training never used), rendered
square at that size; share of images whose positive tags at WD's default thresholds (general 0.35,
character 0.85) contain the true attribute:

{table}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--scenes", type=int, default=30000, help="training scenes rendered once")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--eval-count", type=int, default=2000)
    parser.add_argument("--eval-seed", type=int, default=20261202)
    args = parser.parse_args(argv)

    started = time.monotonic()
    model, tags, counts = train(args.steps, args.seed, args.scenes, lr=args.lr)
    seconds = time.monotonic() - started

    out: Path = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the shipped folder should not be
    try:
        digest = tensor_hash(_write_folder(model, tags, counts, tmp))
        shipped, _ = load_folder(tmp)  # evaluate what is shipped, read back as a loader would
        results = {pixels: evaluate(shipped, tags, args.eval_count, args.eval_seed, pixels) for pixels in (64, 256)}
        table = results_table(results)
        print(table)
        command = (
            f"python -m easy_diffuser.shapes.booru_train --steps {args.steps} --seed {args.seed} "
            f"--scenes {args.scenes} --lr {args.lr:g}"
        )
        parameters = sum(p.numel() for p in shipped.parameters())
        readme = _readme(command, seconds, table, digest, args.eval_count, args.eval_seed, parameters)
        (tmp / "README.md").write_text(readme)
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
    print(f"trained {args.steps} steps in {seconds:.0f} s; wrote {out} (tensor hash {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
