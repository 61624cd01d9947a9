"""A WD tagger in the webui's torch (timm, as Easy Diffuser runs it) against onnxruntime (as the wd14-tagger
extensions run it), on the same weights, side by side in one run, batch 1 and 16.

The weights are random, in WD v3 ViT's shape (config.json as SmilingWolf's: vit_base_patch16_224 with
img_size 448, no class token, average pool, gelu_tanh, 10,861 classes): they time the same as trained ones,
and nothing is downloaded. The bench writes the hub folder, loads it through easy_diffuser.tagger (the torch
path is the engine's own), exports the same module to ONNX and runs it with onnxruntime's CPU provider.
Both take the same preprocessed batch and give probabilities (the sigmoid is inside both); the real WD
ONNX file takes NHWC 0-255 pixels instead, which costs nothing measurable. The torch column is
`LoadedTagger.probabilities` as the engine calls it: on a CPU, pairs of images and oneDNN's matrix products
(devices.cpu_matmuls); onnxruntime takes each batch whole, as the wd14-tagger extensions give it.

    pip install 'easy-diffuser[bench]'      # onnx, onnxruntime: for this bench only
    python bench/bench_tagger.py                      # WD-vit size (86 M parameters, 448 px)
    python bench/bench_tagger.py --size small         # a ViT-S at 448 px, for a slow or busy CPU
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from easy_diffuser.kinds import wd_tagger as tagger  # noqa: E402
from easy_diffuser.kinds.timm_network import build_network  # noqa: E402

SIZES = {
    # WD v3 ViT's config.json; "small" and "tiny" are the same at ViT-S and ViT-Ti width
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
}
CLASSES = 10_861


def random_tagger(folder: Path, size: str = "base", classes: int = CLASSES, pixels: int = 448) -> Path:
    """A WD-v3-ViT-shaped tagger folder with random weights (model.safetensors, config.json, selected_tags.csv)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model_args = {
        "img_size": pixels,
        "class_token": False,
        "global_pool": "avg",
        "fc_norm": False,
        "act_layer": "gelu_tanh",
        **SIZES[size],
    }
    config = {
        "architecture": "vit_base_patch16_224",
        "num_classes": classes,
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [3, pixels, pixels],
            "interpolation": "bicubic",
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    with (folder / "selected_tags.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(tagger.CSV_HEADER)
        ratings = ("general", "sensitive", "questionable", "explicit")
        writer.writerows([index, name, 9, 0] for index, name in enumerate(ratings))
        writer.writerows([index, f"tag_{index}", 0, 0] for index in range(len(ratings), classes))
    torch.manual_seed(0)
    model = build_network(config, folder / "config.json")
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


class _WithSigmoid(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(pixels))


def onnx_session(model: torch.nn.Module, pixels: int, path: Path):
    import onnxruntime

    example = torch.zeros(1, 3, pixels, pixels)
    torch.onnx.export(
        _WithSigmoid(model),
        (example,),
        str(path),
        dynamo=False,  # the TorchScript exporter: no onnxscript needed
        input_names=["input"],
        output_names=["probabilities"],
        dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"input": batch.numpy()})[0]


def seconds(run: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="base")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each, interleaved; the median counts")
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: each one's own)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile'd (inductor; needs a C compiler)")
    args = parser.parse_args()
    import onnxruntime

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        folder = random_tagger(Path(work) / "wd-random", args.size)
        loaded = tagger.load_folder(folder)
        pixels = loaded.image_size
        run_onnx = onnx_session(loaded.model, pixels, Path(work) / "model.onnx")
        runners = {"torch": loaded.probabilities, "onnxruntime": run_onnx}
        if args.compile:  # the engine's own path (CPU pairs, oneDNN matmuls) with the network compiled by inductor
            compiled = replace(loaded, model=torch.compile(loaded.model, dynamic=False))
            runners["torch.compile"] = compiled.probabilities
        rows = []
        for batch_size in args.batches:
            batch = torch.rand(batch_size, 3, pixels, pixels) * 2 - 1
            answers = {name: np.asarray(run(batch)) for name, run in runners.items()}  # warm-up (and compile)
            difference = max(float(np.abs(answer - answers["torch"]).max()) for answer in answers.values())
            timed: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(args.repeat):  # interleaved: a shared CPU's load comes and goes for all
                for name, run in runners.items():
                    timed[name] += seconds(lambda: run(batch), 1)
            rows.append((batch_size, {name: statistics.median(values) for name, values in timed.items()}, difference))

    params = sum(p.numel() for p in loaded.model.parameters()) / 1e6
    print(
        f"WD-v3-ViT-shaped tagger ({args.size}: {params:.0f} M parameters, {pixels} px, {CLASSES:,} tags), CPU, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads) vs onnxruntime {onnxruntime.__version__}, "
        f"median of {args.repeat}\n"
    )
    names = list(rows[0][1])
    print(f"{'batch':>5}  " + "  ".join(f"{name + ' s/image':>22}" for name in names) + "  time / ort's  max |dp|")
    for batch_size, median, difference in rows:
        ratios = ", ".join(
            f"{name} {median[name] / median['onnxruntime']:.2f}" for name in names if name != "onnxruntime"
        )
        per_image = "  ".join(f"{median[name] / batch_size:>22.3f}" for name in names)
        print(f"{batch_size:>5}  {per_image}  {ratios}  {difference:.1e}")


if __name__ == "__main__":
    main()
