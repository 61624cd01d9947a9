"""Take the README's picture of booru mode (docs/booru-tab.png) with the browser tests' stand-in webui.

    PYTHONPATH=$PWD .venv-gradio3/bin/python tests/ui/screenshot_booru.py [--out docs/booru-tab.png]

gradio 3.41 is the A1111 look. The model setting is shapes-booru, the shipped tiny tagger; the loaded
checkpoint is a Pony one by its name, so the prompt takes Pony's preset and the status line says why.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "webui_stub"), str(HERE), str(HERE.parents[1])]  # the stand-in `modules`, the harness

from modules import sd_models, shared  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

import webui_host  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SAMPLE = HERE.parents[1] / "docs" / "sample.png"  # a red circle
CHECKPOINT = "ponyDiffusionV6XL.safetensors"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/booru-tab.png"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        webui_host.load_extension([], Path(folder) / "models")
        shared.opts.easy_diffuser_model = "shapes-booru"
        shared.opts.easy_diffuser_extract_on_drop = False
        info = SimpleNamespace(filename=CHECKPOINT, title=CHECKPOINT)
        sd_models.model_data.sd_model = SimpleNamespace(sd_checkpoint_info=info)
        demo = webui_host.build_page()
        url = webui_host.serve(demo)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1280, "height": 1100})
                page.set_default_timeout(120_000)
                page.goto(url)
                page.set_input_files("#easy_diffuser_image input[type=file]", str(SAMPLE))
                page.wait_for_selector("#easy_diffuser_image img")
                page.click("#easy_diffuser_extract")
                expect(page.locator("#easy_diffuser_prompt textarea")).to_have_value(re.compile(r"\bred, circle\b"))
                status = page.locator("#easy_diffuser_status .easy-diffuser-status")
                expect(status).to_contain_text("preset: Pony")
                page.locator("#tab_easy_diffuser").screenshot(path=str(args.out))
                browser.close()
        finally:
            demo.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
