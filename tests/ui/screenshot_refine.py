"""Take the README's picture of Check and Refine (docs/refine-tab.png) with the browser tests' stand-in webui.

    PYTHONPATH=$PWD .venv-gradio3/bin/python tests/ui/screenshot_refine.py [--out docs/refine-tab.png]

gradio 3.41 is the A1111 look. The stand-in checkpoint draws shapes-world scenes, shapes-demo is the
model: the tab refines a weak hand-written prompt ("red") for a red circle, round by round.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "webui_stub"), str(HERE), str(HERE.parents[1])]  # the stand-in `modules`, the harness

from modules import sd_models, shared  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from easy_diffuser.shapes import world  # noqa: E402

import webui_host  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/refine-tab.png"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "red-circle.png"
        scene = world.random_scene(random.Random(0), colour="red", shape="circle", background="gray", size="large")
        world.draw(scene, 256).save(image)
        webui_host.load_extension([], Path(folder) / "models")
        shared.opts.easy_diffuser_model = "shapes-demo"
        shared.opts.easy_diffuser_extract_on_drop = False  # the prompt box holds what is typed, as in the test
        sd_models.checkpoints_list = {"stand-in.safetensors": object()}
        demo = webui_host.build_page()
        url = webui_host.serve(demo)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1280, "height": 1100})
                page.set_default_timeout(120_000)
                page.goto(url)
                page.set_input_files("#easy_diffuser_image input[type=file]", str(image))
                page.wait_for_selector("#easy_diffuser_image img")
                page.locator("#easy_diffuser_prompt textarea").fill("red")
                page.click("#easy_diffuser_refine")
                report = page.locator("#easy_diffuser_round_trip_report .easy-diffuser-round-trip")
                expect(report).to_contain_text(re.compile(r"Best: round \d"), timeout=120_000)
                page.locator("#tab_easy_diffuser").screenshot(path=str(args.out))
                browser.close()
        finally:
            demo.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
