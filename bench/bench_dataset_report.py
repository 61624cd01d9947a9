"""The dataset report's time and peak memory over a folder of small caption files, beside what merely reading
the same files costs, each in a fresh process (peak memory: the process's ru_maxrss).

A temp folder gets FILES images (empty files: the report pairs them by name, never opens them) and a caption
each of about 12 tags drawn from a 2,000-tag vocabulary (a few tags on most images, a long tail of rare ones,
as a tagger writes them). The files were just written, so both sides read them from the page cache.

    python bench/bench_dataset_report.py                 # 100,000 and 10,000 files
    python bench/bench_dataset_report.py --files 20000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCABULARY = 2000
TAGS_PER_CAPTION = 12


def make_dataset(folder: Path, files: int) -> int:
    """FILES image names and their captions; returns the captions' total size in bytes."""
    draw = random.Random(0)
    vocabulary = [f"tag_{number}" for number in range(VOCABULARY)]
    weights = [1 / (rank + 1) for rank in range(VOCABULARY)]  # Zipf: 1girl on most images, rare tags in the tail
    size = 0
    for number in range(files):
        name = f"img_{number:06d}"
        (folder / f"{name}.png").touch()
        tags = dict.fromkeys(draw.choices(vocabulary, weights, k=TAGS_PER_CAPTION))
        text = (", ".join(tags) + "\n").encode()
        (folder / f"{name}.txt").write_bytes(text)
        size += len(text)
    return size


def child(step: str, folder: Path, out: Path) -> None:
    """One measured step in this (fresh) process; prints its seconds and peak memory as JSON."""
    import matplotlib.pyplot  # noqa: F401  (in every step's baseline: the chart's library is no dataset memory)

    from easy_diffuser.dataset.report import build_report, write_report

    traced = 0
    started = time.perf_counter()
    if step == "read":  # the floor: every caption read once, nothing kept
        for path in folder.iterdir():
            if path.suffix == ".txt":
                path.read_bytes()
    elif step == "report":
        write_report(build_report(folder, ".txt"), out)
    elif step == "traced":  # what the report's index holds, as Python allocations (slower: not timed)
        tracemalloc.start()
        build_report(folder, ".txt")
        traced = tracemalloc.get_traced_memory()[1]
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KB on Linux
    print(json.dumps({"seconds": seconds, "peak": peak, "traced": traced}))


def measure(step: str, folder: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", step, str(folder), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, "MPLBACKEND": "Agg"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(files: int) -> None:
    with tempfile.TemporaryDirectory() as temp:
        folder, out = Path(temp) / "train", Path(temp) / "report"
        folder.mkdir()
        size = make_dataset(folder, files)
        steps = {step: measure(step, folder, out) for step in ("import", "read", "report", "traced")}
        report_json = (out / "tags.json").stat().st_size
    base, read, report = steps["import"], steps["read"], steps["report"]
    mb = 2**20
    print(f"\n{files:,} caption files ({size / mb:.1f} MB of captions; tags.json {report_json / mb:.1f} MB)")
    print(f"{'':28}{'seconds':>9}{'peak MB':>10}{'over import MB':>16}")
    print(f"{'import only':28}{'':>9}{base['peak'] / mb:>10.1f}")
    for name, step in (("read every caption", read), ("report (csv, json, png)", report)):
        print(f"{name:28}{step['seconds']:>9.2f}{step['peak'] / mb:>10.1f}{_over(step, base):>16.1f}")
    traced = steps["traced"]["traced"]
    print(
        f"report / read: {report['seconds'] / read['seconds']:.1f}x the time, {_over(report, base) * mb / files:.0f} "
        f"bytes per caption file over import; the index's peak Python allocation: {traced / mb:.1f} MB "
        f"({traced / files:.0f} bytes per file)"
    )


def _over(step: dict, base: dict) -> float:
    return (step["peak"] - base["peak"]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[100_000, 10_000])
    parser.add_argument("--child", nargs=3, metavar=("STEP", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, folder, out = args.child
        return child(step, Path(folder), Path(out))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for files in args.files:
        bench(files)


if __name__ == "__main__":
    main()
