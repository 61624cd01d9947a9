"""Take docs/webui.md's picture of Check and Refine (docs/refine-tab.png) with the browser tests' stand-in webui.

    PYTHONPATH=$PWD .venv-gradio3/bin/python tests/ui/screenshot_refine.py [--out docs/refine-tab.png]

gradio 3.41 is the A1111 look. The stand-in checkpoint draws shapes-world scenes, shapes-demo is the
model: the tab refines a weak hand-written prompt ("red") for a red circle, round by round.
"""

from __future__ import annotations

import random
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "webui_stub"), str(HERE), str(HERE.parents[1])]  # the stand-in `modules`, the harness

from modules import sd_models  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from easy_diffuser.shapes import world  # noqa: E402

import webui_host  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    out = webui_host.picture_path(__doc__.splitlines()[0], Path("docs/refine-tab.png"), argv)

    def refine_red(page) -> None:
        page.set_input_files("#easy_diffuser_image input[type=file]", str(image))
        page.wait_for_selector("#easy_diffuser_image img")
        page.locator("#easy_diffuser_prompt textarea").fill("red")
        page.click("#easy_diffuser_refine")
        report = page.locator("#easy_diffuser_round_trip_report .easy-diffuser-round-trip")
        expect(report).to_contain_text(re.compile(r"Best: round \d"), timeout=120_000)

    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "red-circle.png"
        scene = world.random_scene(random.Random(0), colour="red", shape="circle", background="gray", size="large")
        world.draw(scene, 256).save(image)
        sd_models.checkpoints_list = {"stand-in.safetensors": object()}
        # Extract on drop is off: the prompt box holds what is typed, as in the test.
        return webui_host.screenshot_tab(out, {"easy_diffuser_model": "shapes-demo"}, refine_red)


if __name__ == "__main__":
    raise SystemExit(main())
