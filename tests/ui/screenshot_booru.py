"""Take docs/booru.md's picture of booru mode (docs/booru-tab.png) with the browser tests' stand-in webui.

    PYTHONPATH=$PWD .venv-gradio3/bin/python tests/ui/screenshot_booru.py [--out docs/booru-tab.png]

gradio 3.41 is the A1111 look. The model setting is shapes-booru, the shipped tiny tagger; the loaded
checkpoint is a Pony one by its name, so the prompt takes Pony's preset and the status line says why.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "webui_stub"), str(HERE), str(HERE.parents[1])]  # the stand-in `modules`, the harness

from modules import sd_models  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

import webui_host  # noqa: E402

SAMPLE = HERE.parents[1] / "docs" / "sample.png"  # a red circle
CHECKPOINT = "ponyDiffusionV6XL.safetensors"


def extract_the_sample(page) -> None:
    page.set_input_files("#easy_diffuser_image input[type=file]", str(SAMPLE))
    page.wait_for_selector("#easy_diffuser_image img")
    page.click("#easy_diffuser_extract")
    expect(page.locator("#easy_diffuser_prompt textarea")).to_have_value(re.compile(r"(?=.*\bred\b).*\bcircle\b"))
    expect(page.locator("#easy_diffuser_status .easy-diffuser-status")).to_contain_text("preset: Pony")


def main(argv: list[str] | None = None) -> int:
    out = webui_host.picture_path(__doc__.splitlines()[0], Path("docs/booru-tab.png"), argv)
    info = SimpleNamespace(filename=CHECKPOINT, title=CHECKPOINT)  # the loaded checkpoint, as the host reads it
    sd_models.model_data.sd_model = SimpleNamespace(sd_checkpoint_info=info)
    return webui_host.screenshot_tab(out, {"easy_diffuser_model": "shapes-booru"}, extract_the_sample)


if __name__ == "__main__":
    raise SystemExit(main())
