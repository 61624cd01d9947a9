"""Sentences from a VLM server over a folder: does asking `--caption-concurrency` descriptions at once run the
folder at the server's speed? A stand-in OpenAI-compatible server (tests/vlm_server.py) on 127.0.0.1 answers
every request after a fixed delay, as a VLM that takes that long an image and serves that many at once would.
The folder is captioned as the CLI does it (caption_folder: decode threads, CLIP batches, the writer thread),
with shapes-demo as the CLIP model, at each concurrency; the ideal is `images x delay / concurrency`. The
server's waits overlap the folder's own work (decoding, CLIP, writing), so the run can't beat the larger of the
ideal and that work's time, measured first without a server: `bound`.

    python bench/bench_describer_server.py                          # 200 images, 0.5 s each, concurrency 1 4 8
    python bench/bench_describer_server.py --images 400 --delay 0.25 --concurrency 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from vlm_server import StandInServer  # noqa: E402

from easy_diffuser.batch import caption_folder  # noqa: E402
from easy_diffuser.describe_server import ServerDescriber  # noqa: E402
from easy_diffuser.engine import Engine  # noqa: E402
from easy_diffuser.options import ExtractOptions, ServerOptions  # noqa: E402

from scenes import draw_scene  # noqa: E402

COLOURS = ("red", "green", "blue", "yellow")


def run(engine: Engine, folder: Path, options: ExtractOptions) -> float:
    """Seconds to caption the folder from scratch (every caption rewritten)."""
    started = time.perf_counter()
    summary = caption_folder(engine, folder, options, overwrite=True)
    seconds = time.perf_counter() - started
    assert not summary.failed, summary.failed
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds the stand-in server takes an image")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp) / "images"
        folder.mkdir()
        for index in range(args.images):
            draw_scene(folder / f"{index:04d}.png", 64, colour=COLOURS[index % len(COLOURS)])
        engine = Engine("shapes-demo", "cpu", cache_dir=Path(temp) / "cache")
        tags_only = run(engine, folder, ExtractOptions(prompt_style="tags"))
        print(f"{args.images} images, the stand-in server answers after {args.delay:g} s")
        print(f"tags only, no server: {tags_only:.2f} s (the folder's own cost)\n")
        columns = ("concurrency", "run (s)", "ideal (s)", "run / ideal", "run / bound", "speed-up")
        print("  ".join(f"{name:>11}" for name in columns))
        first = None
        with StandInServer(delay=args.delay) as server:
            for concurrency in args.concurrency:
                engine.describer = ServerDescriber(ServerOptions(server.url, "stand-in", concurrency=concurrency))
                seconds = run(engine, folder, ExtractOptions(prompt_style="sentences"))
                ideal = args.images * args.delay / concurrency
                first = first or seconds
                bound = max(ideal, tags_only)
                ratios = f"{seconds / ideal:>11.2f}  {seconds / bound:>11.2f}  {first / seconds:>10.2f}x"
                print(f"{concurrency:>11}  {seconds:>11.2f}  {ideal:>11.2f}  {ratios}")
            assert len(server.requests) == args.images * len(args.concurrency) and not server.problems


if __name__ == "__main__":
    main()
