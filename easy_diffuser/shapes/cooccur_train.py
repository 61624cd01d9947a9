"""Train the tiny CLIP of the co-occurrence world and write it as an open_clip model folder.

    python -m easy_diffuser.shapes.cooccur_train [--steps N] [--seed S] [--out DIR]

Same architecture, batches and schedule as shapes-demo (`train.py`, reused by import), with two
differences that make its scores behave like a real CLIP's on this world:

* mixed and backdrop batches are drawn from the world's joint distribution (`cooccur.JOINT`), so a
  tag's text embedding also absorbs what usually comes with it ("yellow" leans towards stars);
* every batch also holds a caption of every distractor tag, matching no image. They only ever
  appear as wrong answers, so every image learns to score them low: unrelated tags end up far
  below the world's own false values, as "tractor" sits below "cat" for a photo of a dog. A
  spread term keeps them apart from each other: pushed only away from images they would all
  collapse onto one point (text cosine 0.99 in a first run), and the prompt's near-duplicate
  merging would then keep one of them, which a real CLIP's unrelated tags ("tractor", "opera")
  are not.

Fixed seed + fixed step count => the same weights on every run (CPU).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from easy_diffuser import scoring
from easy_diffuser.calibration.metric import fit_tag_calibration
from easy_diffuser.embedding import token_lengths, trimmed_encoder
from easy_diffuser.shapes import cooccur, train, world

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "shapes-cooccur"
SPREAD_TEMPERATURE = 2.0  # t of the uniformity term log mean exp(-t |a - b|^2) (Wang & Isola 2020)
_DISTRACTOR_TEMPLATES = ("{}", "{}", "a photo of {}")


def _batch(rng: random.Random, size: int, kind: str) -> tuple[list[world.Scene], list[tuple[str, ...]]]:
    """train._batch with the world's co-occurring scenes; "shape" batches stay uniform over shapes
    with one pinned colour and background, the trick that makes shape learnable at all."""
    if kind == "shape":
        return train._batch(rng, size, kind)
    if kind == "backdrop":
        return (
            [cooccur.random_scene(rng) for _ in range(size)],
            [("background",) if i % 2 == 0 else ("colour",) for i in range(size)],
        )
    kinds = list(train._KIND_WEIGHTS)
    chosen = rng.choices(kinds, weights=list(train._KIND_WEIGHTS.values()), k=size)
    return [cooccur.random_scene(rng) for _ in range(size)], chosen


def _loss(
    logits: torch.Tensor, distractor_logits: torch.Tensor, match: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """train._loss where each image's choice also includes captions that match no image."""
    every_caption = torch.cat([logits, distractor_logits], dim=1)
    image_targets = torch.cat([match * weights, torch.zeros_like(distractor_logits)], dim=1)
    image_targets = image_targets / image_targets.sum(1, keepdim=True)
    image_to_text = -(image_targets * every_caption.log_softmax(1)).sum(1).mean()
    text_to_image = -(match / match.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def _spread(features: torch.Tensor) -> torch.Tensor:
    """Uniformity of unit vectors: low when they are spread over the sphere, 0 when all are one."""
    distances = torch.pdist(features).pow(2)
    return (-SPREAD_TEMPERATURE * distances).exp().mean().log()


def train_model(
    steps: int, seed: int, batch_size: int = 64
) -> tuple[torch.nn.Module, train.Preprocess, train.Tokenizer]:
    # A model this small gains nothing from more threads, and one thread makes the weights
    # independent of the machine's core count.
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, preprocess, tokenizer = train.new_model()
    model.train()
    # The text tower is causal: cut the padding after the longest caption, same result, less work.
    encode_text = trimmed_encoder(SimpleNamespace(model=model, device="cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98), weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: train.lr_factor(step, steps))
    progress = tqdm(range(steps), desc="training", file=sys.stdout)
    for step in progress:
        scenes, kinds = _batch(rng, batch_size, train._batch_kind(step))
        texts = [world.caption(s, k, rng) for s, k in zip(scenes, kinds)]
        texts += [rng.choice(_DISTRACTOR_TEMPLATES).format(tag) for tag in cooccur.DISTRACTOR_TAGS]
        images = torch.stack([preprocess(world.draw(s, 64)) for s in scenes])
        image_features = F.normalize(model.encode_image(images), dim=-1)
        tokens = tokenizer(texts)
        text_features = F.normalize(encode_text(tokens[:, : int(token_lengths(tokens).max())]), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        weights = torch.tensor([train._TARGET_WEIGHTS.get(k, 1.0) for k in kinds])
        loss = _loss(logits[:, :batch_size], logits[:, batch_size:], train._matches(scenes, kinds), weights)
        loss = loss + _spread(text_features[batch_size:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    train._recompute_batchnorm(model, preprocess, rng, batch_size, sample=cooccur.random_scene)
    model.eval()
    return model, preprocess, tokenizer


# --- evaluation ---------------------------------------------------------------


@torch.no_grad()
def relevance_of(model, preprocess, tokenizer, scenes: list[world.Scene]) -> tuple[list[str], torch.Tensor]:
    """(tags, relevance [scenes, tags]) over the whole vocabulary, as the product scores it."""
    tags = [tag for values in cooccur.VOCABULARY.values() for tag in values]
    text = F.normalize(model.encode_text(tokenizer(tags)), dim=-1)
    images = torch.stack([preprocess(world.draw(s, 64)) for s in scenes])
    embeddings = F.normalize(model.encode_image(images), dim=-1)
    return tags, torch.stack([s.relevance for s in scoring.score(embeddings, text)])


def evaluate(model, preprocess, tokenizer, count: int = 600, seed: int = 12345) -> dict[str, float]:
    """Top-1 within each category, mean relevance of true / false in-world / distractor tags, and the
    share of scenes where every distractor scores below every in-world tag."""
    scenes = cooccur.scenes(count, seed)
    tags, relevance = relevance_of(model, preprocess, tokenizer, scenes)
    index = {tag: i for i, tag in enumerate(tags)}
    in_world = torch.tensor([tag not in cooccur.DISTRACTOR_TAGS for tag in tags])
    true = torch.tensor([[tag in s.tags().values() for tag in tags] for s in scenes])
    results = {}
    for category, values in world.VOCABULARY.items():
        columns = [index[v] for v in values]
        best = relevance[:, columns].argmax(1).tolist()
        results[f"{category} top-1"] = sum(values[b] == s.tags()[category] for b, s in zip(best, scenes)) / count
    results["true tags"] = relevance[true].mean().item()
    results["false in-world tags"] = relevance[~true & in_world].mean().item()
    results["distractors"] = relevance[:, ~in_world].mean().item()
    lowest_in_world = relevance[:, in_world].min(1).values
    below = relevance[:, ~in_world].max(1).values < lowest_in_world
    results["distractors all below in-world"] = below.float().mean().item()
    return results


def fit_probabilities(model, preprocess, tokenizer, count: int = 400, seed: int = 7):
    """center/temperature of the tag probabilities, by logistic regression on known scenes."""
    scenes = cooccur.scenes(count, seed)
    tags, relevance = relevance_of(model, preprocess, tokenizer, scenes)
    present = torch.tensor([[float(tag in s.tags().values()) for tag in tags] for s in scenes])
    return fit_tag_calibration(relevance, present)


# --- writing the folder -------------------------------------------------------


def _write_folder(model: torch.nn.Module, folder: Path, settings: dict) -> dict[str, torch.Tensor]:
    """Everything except the README; returns the fp16 state dict written."""
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_model.safetensors").chmod(0o644)  # safetensors writes it private
    config = {"model_cfg": train.MODEL_CFG, "preprocess_cfg": {"mean": train.MEAN, "std": train.STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "easy_diffuser.json").write_text(json.dumps(settings, indent=2) + "\n")
    (folder / "vocabulary").mkdir()
    for category, tags in cooccur.VOCABULARY.items():
        (folder / "vocabulary" / f"{category}.txt").write_text("\n".join(tags) + "\n")
    return state


def _readme(command: str, seconds: float, results: dict[str, float], digest: str) -> str:
    table = "\n".join(f"| {name} | {value:.3f} |" for name, value in results.items())
    return f"""# shapes-cooccur: a tiny CLIP for the co-occurrence world

shapes-demo's architecture (3.6M parameters, ResNet image tower, 64 px, embed_dim 64) trained on
`easy_diffuser.shapes.cooccur`: the shapes world where attributes go together (a star is usually
yellow and small, ...) and the vocabulary also holds 89 tags the world never shows ("aardvark",
"bus", "chiaroscuro", ...), seen in training only as captions that match no image. It exists to
test the negative-prompt rule (docs/calibration.md, "A world where the rules differ").

- `open_clip_config.json`, `open_clip_model.safetensors` (fp16, tensor hash `{digest}`; load into
  fp32 and call `model.eval()`), `vocabulary/*.txt` (13 world tags + 89 distractors),
  `easy_diffuser.json` (scoring settings; prob_center/prob_temperature fitted on 400 known scenes).

Made with (CPU, {seconds:.0f} s of training, reproducible for a fixed seed and step count):

    {command}

The shipped fp16 weights on 600 fresh scenes of the world (64 px; relevance = z-score over all
102 tags):

| measure | value |
|---|---|
{table}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    started = time.monotonic()
    model, _, _ = train_model(args.steps, args.seed)
    seconds = time.monotonic() - started

    out: Path = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the shipped folder should not be
    try:
        settings = {"tau": 1.0, "max_per_category": 1, "calibration_tags": 2}
        digest = train.tensor_hash(_write_folder(model, tmp, settings))
        # Evaluate and fit what is shipped: the fp16 file loaded back, in eval mode.
        shipped = train.load_folder(tmp)
        fitted = fit_probabilities(*shipped)
        settings.update(prob_center=round(fitted.center, 3), prob_temperature=round(fitted.temperature, 3))
        (tmp / "easy_diffuser.json").write_text(json.dumps(settings, indent=2) + "\n")
        results = evaluate(*shipped)
        for name, value in results.items():
            print(f"{name}: {value:.3f}")
        command = f"python -m easy_diffuser.shapes.cooccur_train --steps {args.steps} --seed {args.seed}"
        (tmp / "README.md").write_text(_readme(command, seconds, results, digest))
        train.replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"trained {args.steps} steps in {seconds:.0f} s; wrote {out} (tensor hash {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
