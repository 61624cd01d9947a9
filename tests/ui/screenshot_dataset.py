"""Take the README's picture of the Dataset panel (docs/dataset-panel.png) with the browser tests' stand-in webui.

    PYTHONPATH=$PWD .venv-gradio3/bin/python tests/ui/screenshot_dataset.py [--out docs/dataset-panel.png]

gradio 3.41 is the A1111 look. A LoRA dataset of 60 images is made in a temp folder, its report is drawn and
a rename is tried as a dry run (nothing changes), as a user would before applying it.
"""

from __future__ import annotations

import random
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "webui_stub"), str(HERE), str(HERE.parents[1])]  # the stand-in `modules`, the harness

from playwright.sync_api import expect  # noqa: E402

import webui_host  # noqa: E402

# (tag, share of the images that have it): a character LoRA's captions as a tagger writes them.
TAGS = (
    ("1girl", 0.97),
    ("solo", 0.9),
    ("long hair", 0.8),
    ("red hair", 0.7),
    ("looking at viewer", 0.55),
    ("smile", 0.5),
    ("school uniform", 0.4),
    ("outdoors", 0.3),
    ("blue eyes", 0.28),
    ("upper body", 0.22),
    ("holding book", 0.1),
    ("watermark", 0.05),
    ("signature", 0.03),
)


def make_dataset(folder: Path, images: int = 60) -> None:
    draw = random.Random(26)
    for number in range(images):
        name = f"mychar_{number:03d}"
        (folder / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # never opened: the name pairs it
        if number % 29 == 28:
            continue  # two images the tagger missed: the report lists them
        tags = [tag for tag, share in TAGS if draw.random() < share]
        (folder / f"{name}.txt").write_text(", ".join(tags) + "\n", encoding="utf-8")


def report_and_dry_run(folder: Path, out_dir: Path) -> callable:
    def work(page) -> None:
        page.locator("#easy_diffuser_batch").get_by_text("Batch: caption a folder", exact=True).click()
        page.locator("#easy_diffuser_dataset").get_by_text("Dataset: tag report and bulk edits", exact=True).click()
        page.locator("#easy_diffuser_batch_folder textarea").fill(str(folder))
        page.locator("#easy_diffuser_dataset_out textarea").fill(str(out_dir))
        page.locator("#easy_diffuser_dataset_min_share input[type=number]").fill("0.05")
        page.locator("#easy_diffuser_dataset_min_share input[type=number]").press("Enter")
        page.click("#easy_diffuser_dataset_report_run")
        expect(page.locator("#easy_diffuser_dataset_chart img")).to_be_visible()
        page.locator("#easy_diffuser_rename textarea").fill("red hair=red_hair")
        page.locator("#easy_diffuser_remove textarea").fill("watermark, signature")
        page.click("#easy_diffuser_dataset_dry_run")
        edited = page.locator("#easy_diffuser_dataset_edit_report .easy-diffuser-dataset-edit")
        expect(edited).to_contain_text(re.compile(r"\d+ captions would change"))
        page.evaluate("document.getElementById('easy_diffuser_dataset').scrollIntoView()")

    return work


def main(argv: list[str] | None = None) -> int:
    out = webui_host.picture_path(__doc__.splitlines()[0], Path("docs/dataset-panel.png"), argv)
    with tempfile.TemporaryDirectory() as temp:
        folder, out_dir = Path(temp) / "mychar", Path(temp) / "mychar-report"
        folder.mkdir()
        make_dataset(folder)
        work = report_and_dry_run(folder, out_dir)
        return webui_host.screenshot_tab(out.resolve(), {}, work, selector="#easy_diffuser_dataset")


if __name__ == "__main__":
    raise SystemExit(main())
