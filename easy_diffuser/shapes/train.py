"""Train the tiny shapes-world CLIP and write it as an open_clip model folder.

    python -m easy_diffuser.shapes.train [--steps N] [--seed S] [--out DIR]

Fixed seed + fixed step count => the same weights on every run (CPU); a time
budget would not be reproducible. The written folder is evaluated after an
fp16 round trip, so the reported accuracy is that of the shipped file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from easy_diffuser.shapes import world

MODEL_NAME = "easy-diffuser-shapes"
# Only keys that both open_clip 2.20 and 3.x understand; `layers` as a list
# selects open_clip's ResNet image tower (a tiny ViT does not learn shape).
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# open_clip's default (OpenAI CLIP) normalisation, used in training as well.
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "shapes-demo"
EVAL_SIZES = (64, 224, 512, 1024)

# How often each caption kind is drawn in a mixed batch.
_KIND_WEIGHTS: dict[tuple[str, ...], float] = {
    ("colour",): 0.15,
    ("shape",): 0.25,
    ("background",): 0.1,
    ("size",): 0.1,
    ("colour", "shape"): 0.2,
    ("colour", "shape", "background", "size"): 0.2,
}
# Weight of a matching caption in an image's target distribution. The product
# ranks all tags together and must put colour and shape first, so background-
# and size-only captions are asked to score a little lower than true colours
# and shapes (a fixed margin of log(1/weight) in logits).
_TARGET_WEIGHTS: dict[tuple[str, ...], float] = {("background",): 0.3, ("size",): 0.3}

Preprocess = Callable[[Any], torch.Tensor]
Tokenizer = Callable[[list[str]], torch.Tensor]


def register_config() -> None:
    """open_clip finds configs by file stem; 2.20's tokenizer needs this too."""
    folder = Path(tempfile.mkdtemp(prefix="shapes-cfg-"))
    path = folder / f"{MODEL_NAME}.json"
    path.write_text(json.dumps(MODEL_CFG))
    open_clip.add_model_config(path)


def new_model() -> tuple[torch.nn.Module, Preprocess, Tokenizer]:
    """Fresh (randomly initialised) model, eval preprocessing and tokenizer."""
    register_config()
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, image_mean=MEAN, image_std=STD)
    return model, preprocess, open_clip.get_tokenizer(MODEL_NAME)


def load_folder(folder: Path) -> tuple[torch.nn.Module, Preprocess, Tokenizer]:
    """Load a written model folder (fp16 weights -> fp32) in eval mode."""
    model, preprocess, tokenizer = new_model()
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in load_file(str(folder / "open_clip_model.safetensors")).items()
    }
    model.load_state_dict(state)
    model.eval()  # BatchNorm must use running stats for single images
    return model, preprocess, tokenizer


# --- training ---------------------------------------------------------------


def _batch_kind(step: int) -> str:
    """Odd steps: shape batches; even steps alternate mixed and colour/background batches."""
    if step % 2 == 1:
        return "shape"
    return "mixed" if step % 4 == 0 else "backdrop"


def _batch(rng: random.Random, size: int, kind: str) -> tuple[list[world.Scene], list[tuple[str, ...]]]:
    """Scenes plus, per scene, which attributes its caption describes.

    "shape" batches share one colour and background: BatchNorm then removes
    the constant colour, so only shape can lower the loss (without this the
    shape words collapse onto one embedding). That also hides colour and
    background in half the batches, and mixed batches alone taught backgrounds
    too weakly (white was called gray), so "backdrop" batches are fully random
    scenes whose captions alternate background-only and colour-only: every
    background caption matches a third of the batch, and colour keeps its share
    of training (pinning the colour here instead starved colour)."""
    if kind == "shape":
        pinned = {"colour": rng.choice(list(world.COLOURS)), "background": rng.choice(list(world.BACKGROUNDS))}
        return [world.random_scene(rng, **pinned) for _ in range(size)], [("shape",)] * size
    if kind == "backdrop":
        return (
            [world.random_scene(rng) for _ in range(size)],
            [("background",) if i % 2 == 0 else ("colour",) for i in range(size)],
        )
    if kind != "mixed":
        raise ValueError(f"unknown batch kind {kind!r}")
    kinds = list(_KIND_WEIGHTS)
    chosen = rng.choices(kinds, weights=list(_KIND_WEIGHTS.values()), k=size)
    return [world.random_scene(rng) for _ in range(size)], chosen


def _matches(scenes: list[world.Scene], kinds: list[tuple[str, ...]]) -> torch.Tensor:
    """M[i, j] = 1 when caption j (of scene j) is also true of image i."""
    tags = [s.tags() for s in scenes]
    return torch.tensor([[float(all(ti[k] == tj[k] for k in kinds[j])) for j, tj in enumerate(tags)] for ti in tags])


def _loss(logits: torch.Tensor, match: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Contrastive loss where one caption may be right for several images;
    `weights[j]` scales caption j's share of each image's target."""
    image_targets = match * weights
    image_to_text = -(image_targets / image_targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(match / match.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def lr_factor(step: int, steps: int) -> float:
    """5% linear warm-up, then cosine decay to zero."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(steps: int, seed: int, batch_size: int = 64) -> tuple[torch.nn.Module, Preprocess, Tokenizer]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, preprocess, tokenizer = new_model()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98), weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps))
    progress = tqdm(range(steps), desc="training", file=sys.stdout)
    for step in progress:
        scenes, kinds = _batch(rng, batch_size, _batch_kind(step))
        texts = [world.caption(s, k, rng) for s, k in zip(scenes, kinds)]
        images = torch.stack([preprocess(world.draw(s, 64)) for s in scenes])
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        weights = torch.tensor([_TARGET_WEIGHTS.get(k, 1.0) for k in kinds])
        loss = _loss(logits, _matches(scenes, kinds), weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    _recompute_batchnorm(model, preprocess, rng, batch_size)
    model.eval()
    return model, preprocess, tokenizer


@torch.no_grad()
def _recompute_batchnorm(
    model: torch.nn.Module,
    preprocess: Preprocess,
    rng: random.Random,
    batch_size: int,
    batches: int = 64,
    sample: Callable[[random.Random], world.Scene] = world.random_scene,
) -> None:
    """Replace BatchNorm's running statistics by plain averages over random scenes (`sample`).

    The running averages kept during training mix in the pinned shape batches,
    which look nothing like a real image's batch; single images are encoded
    with these statistics, so measure them on what will be seen."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    for _ in range(batches):
        scenes = [sample(rng) for _ in range(batch_size)]
        model.encode_image(torch.stack([preprocess(world.draw(s, 64)) for s in scenes]))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


# --- evaluation ---------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    preprocess: Preprocess,
    tokenizer: Tokenizer,
    count: int = 600,
    seed: int = 12345,
    sizes: tuple[int, ...] = EVAL_SIZES,
) -> dict[int, dict[str, float]]:
    """Zero-shot accuracy on fresh scenes, scored as the product does: cosine
    against every bare vocabulary tag. Per size: true colour / shape among the
    top 3 of all tags, top-1 within its own category, and per background the
    share whose best background tag is the true one."""
    vocab = [(cat, tag) for cat, tags in world.VOCABULARY.items() for tag in tags]
    text = F.normalize(model.encode_text(tokenizer([tag for _, tag in vocab])), dim=-1)
    rng = random.Random(seed)
    scenes = [world.random_scene(rng) for _ in range(count)]
    results: dict[int, dict[str, float]] = {}
    for pixels in sizes:
        hits = {"colour_top3": 0, "shape_top3": 0, "colour_top1": 0, "shape_top1": 0}
        backgrounds = {name: [0, 0] for name in world.BACKGROUNDS}  # [right, seen]
        for start in range(0, count, 100):
            chunk = scenes[start : start + 100]
            images = torch.stack([preprocess(world.draw(s, pixels)) for s in chunk])
            scores = F.normalize(model.encode_image(images), dim=-1) @ text.T
            for scene, row in zip(chunk, scores):
                top3 = {vocab[i][1] for i in row.topk(3).indices.tolist()}
                for cat in ("colour", "shape"):
                    truth = scene.tags()[cat]
                    hits[f"{cat}_top3"] += truth in top3
                    in_cat = [i for i, (c, _) in enumerate(vocab) if c == cat]
                    best = max(in_cat, key=lambda i: row[i].item())
                    hits[f"{cat}_top1"] += vocab[best][1] == truth
                in_cat = [i for i, (c, _) in enumerate(vocab) if c == "background"]
                best = max(in_cat, key=lambda i: row[i].item())
                backgrounds[scene.background][0] += vocab[best][1] == scene.tags()["background"]
                backgrounds[scene.background][1] += 1
        results[pixels] = {k: v / count for k, v in hits.items()}
        results[pixels].update(
            {f"background_{name}": right / max(1, seen) for name, (right, seen) in backgrounds.items()}
        )
    return results


def results_table(results: dict[int, dict[str, float]]) -> str:
    names = list(world.BACKGROUNDS)
    lines = [
        "| pixels | colour top-3 (all 13 tags) | shape top-3 (all 13 tags) | colour top-1 (colours) "
        "| shape top-1 (shapes) | " + " | ".join(f"{n} bg top-1 (backgrounds)" for n in names) + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for pixels, r in results.items():
        lines.append(
            f"| {pixels} | {r['colour_top3']:.3f} | {r['shape_top3']:.3f} "
            f"| {r['colour_top1']:.3f} | {r['shape_top1']:.3f} | "
            + " | ".join(f"{r[f'background_{n}']:.3f}" for n in names)
            + " |"
        )
    return "\n".join(lines)


def tensor_hash(state: dict[str, torch.Tensor]) -> str:
    """Hash of the tensors themselves (file bytes are not a stable identity)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# --- writing the folder -------------------------------------------------------


def _write_folder(model: torch.nn.Module, folder: Path, keep_settings: Path | None = None) -> dict[str, torch.Tensor]:
    """Everything except the README; returns the fp16 state dict written.
    `keep_settings`: an existing easy_diffuser.json (e.g. with a calibrated
    tau) to carry over instead of the defaults."""
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": {"mean": MEAN, "std": STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    if keep_settings is not None and keep_settings.is_file():
        shutil.copyfile(keep_settings, folder / "easy_diffuser.json")
    else:
        (folder / "easy_diffuser.json").write_text(json.dumps({"tau": 1.0, "max_per_category": 1}, indent=2) + "\n")
    (folder / "vocabulary").mkdir()
    for category, tags in world.VOCABULARY.items():
        (folder / "vocabulary" / f"{category}.txt").write_text("\n".join(tags) + "\n")
    (folder / "open_clip_model.safetensors").chmod(0o644)  # safetensors writes it private
    return state


def _readme(command: str, seconds: float, table: str, digest: str) -> str:
    return f"""# shapes-demo: a tiny CLIP for the shapes world

A 3.6M-parameter open_clip CLIP (ResNet image tower, 64 px input, embed_dim 64)
trained from scratch on `easy_diffuser.shapes.world`: one red/green/blue/yellow
circle/square/triangle/star, small or large, on a white/black/gray background.
It exists so tests can check real image-to-prompt behaviour offline; it knows
nothing outside this world.

- `open_clip_config.json`: Hugging Face open_clip format (`model_cfg`, `preprocess_cfg`).
- `open_clip_model.safetensors`: `model.state_dict()` in fp16 (tensor hash `{digest}`).
  Load into fp32 and call `model.eval()` (BatchNorm).
- `vocabulary/*.txt`: the 13 tags, one file per category; `easy_diffuser.json`: scoring settings.

Made with (CPU, {seconds:.0f} s of training, reproducible for a fixed seed and step count):

    {command}

Zero-shot accuracy of the shipped fp16 weights on 600 fresh scenes per size
(rendered at that size, preprocessed to 64 px as open_clip does; text = bare tag,
cosine of normalised embeddings; "bg top-1": scenes on that background whose
best-scoring background tag is the right one, about 200 scenes each):

{table}
"""


def replace_folder(tmp: Path, out: Path) -> None:
    """Swap the finished temp folder into place so readers never see a half-written one."""
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--eval-count", type=int, default=600)
    args = parser.parse_args(argv)

    started = time.monotonic()
    model, _, _ = train(args.steps, args.seed)
    seconds = time.monotonic() - started

    out: Path = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the shipped folder should not be
    try:
        digest = tensor_hash(_write_folder(model, tmp, keep_settings=out / "easy_diffuser.json"))
        # Evaluate what is shipped: the fp16 file loaded back, in eval mode.
        results = evaluate(*load_folder(tmp), count=args.eval_count)
        table = results_table(results)
        print(table)
        command = f"python -m easy_diffuser.shapes.train --steps {args.steps} --seed {args.seed}"
        (tmp / "README.md").write_text(_readme(command, seconds, table, digest))
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"trained {args.steps} steps in {seconds:.0f} s; wrote {out} (tensor hash {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
