"""A stand-in webui for the tests, built the way the real one builds itself.

The stub `modules` package replaces the webui's; the extension's script is imported as
modules/scripts.py imports it; txt2img and img2img are stand-ins with the real elem_ids and paste
fields; the tabs are rendered as modules/ui.py renders them (in a user-chosen order), and the
extension's javascript/ and style.css are put into the page as modules/ui_gradio_extensions.py does.
The stand-in is AUTOMATIC1111 1.10 unless `become` makes it another host of HOSTS.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Optional

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[2]
STUB = Path(__file__).resolve().parent / "webui_stub"
for path in (STUB, ROOT):  # the extension folder comes first on sys.path while its scripts import
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import chromium  # noqa: E402
import gradio as gr  # noqa: E402
import modules  # noqa: E402
from modules import devices, infotext_utils, paths, script_callbacks, shared  # noqa: E402

import easy_diffuser.webui  # noqa: E402

# The user moved the Easy Diffuser tab first and img2img before txt2img (Settings > User interface > Tabs order).
TAB_ORDER = ("easy_diffuser", "img2img", "txt2img")


@dataclass(frozen=True)
class Host:
    """A webui the stand-in can be: what it lacks of the `modules` names the extension uses (read from its code),
    and the folder of webui_stub/ with the stand-in of its memory manager's package, if it has one."""

    title: str
    backend: Optional[str] = None  # webui_stub/<backend>/ldm_patched: the old Forge backend
    lacks_modules: tuple[str, ...] = ()  # modules.<name>
    lacks_devices: tuple[str, ...] = ()  # modules.devices.<name>
    lacks_flags: tuple[str, ...] = ()  # command-line flags of A1111's modules/cmd_args.py


HOSTS = {
    "a1111": Host("AUTOMATIC1111 1.10"),
    # Haoming02/sd-webui-forge-classic, branch classic (2025-02-21): A1111's low-VRAM mode, its flags and
    # devices.device_interrogate are gone; GPU memory belongs to ldm_patched's manager.
    "forge-classic": Host(
        "Forge Classic", "forge_classic", ("lowvram",), ("device_interrogate",), ("--lowvram", "--medvram")
    ),
    # Panchovix/stable-diffusion-webui-reForge, branch main (2026-03-11): every A1111 name kept (lowvram.py does
    # nothing), over ldm_patched's newer manager.
    "reforge": Host("reForge", "reforge"),
}
BACKEND_PACKAGE = "ldm_patched"


def become(name: str, monkeypatch: Any) -> Optional[ModuleType]:
    """Make the stand-in webui the host HOSTS[name], freshly started: without the names it lacks, with its memory
    manager's package importable, and the extension's host adapter to be imported again, as a host's first start
    imports it. Returns the host's memory manager (None for A1111). Call forget_backend() after the test."""
    host = HOSTS[name]
    for module in host.lacks_modules:
        monkeypatch.delattr(modules, module, raising=False)
        monkeypatch.setitem(sys.modules, f"modules.{module}", None)  # `from modules import x` raises ImportError
    for attribute in host.lacks_devices:
        monkeypatch.delattr(devices, attribute)
    monkeypatch.setattr(shared, "lacking_flags", set(host.lacks_flags))
    monkeypatch.delitem(sys.modules, "easy_diffuser.webui.host", raising=False)
    monkeypatch.delattr(easy_diffuser.webui, "host", raising=False)
    forget_backend()
    if host.backend is None:
        return None
    monkeypatch.syspath_prepend(str(STUB / host.backend))
    return importlib.import_module(f"{BACKEND_PACKAGE}.modules.model_management")


def forget_backend() -> None:
    """Unload the memory manager stand-in a test imported: the next host may have another, or none."""
    for module in [module for module in sys.modules if module.split(".")[0] == BACKEND_PACKAGE]:
        del sys.modules[module]


def load_extension(args: list[str], models_path: Path) -> ModuleType:
    """Start the webui with a command line: fresh settings, callbacks and script module (like Reload UI)."""
    script_callbacks.clear_callbacks()
    infotext_utils.paste_fields.clear()
    shared.reset(args)
    paths.models_path = str(models_path)
    spec = importlib.util.spec_from_file_location("easy_diffuser_tab", ROOT / "scripts" / "easy_diffuser_tab.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    script_callbacks.ui_settings_callback()
    return module


def build_page() -> gr.Blocks:
    with gr.Blocks(analytics_enabled=False) as txt2img:
        prompt = gr.Textbox(label="Prompt", elem_id="txt2img_prompt", lines=3)
        negative = gr.Textbox(label="Negative prompt", elem_id="txt2img_neg_prompt", lines=3)
        steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
        infotext_utils.add_paste_fields(
            "txt2img", None, [(prompt, "Prompt"), (negative, "Negative prompt"), (steps, "Steps")]
        )
    with gr.Blocks(analytics_enabled=False) as img2img:
        prompt = gr.Textbox(label="Prompt", elem_id="img2img_prompt", lines=3)
        negative = gr.Textbox(label="Negative prompt", elem_id="img2img_neg_prompt", lines=3)
        with gr.Tabs(elem_id="mode_img2img"):
            with gr.TabItem("Sketch", id="img2img_sketch", elem_id="img2img_img2img_sketch_tab"):
                gr.Image(label="Sketch", elem_id="img2img_sketch", type="pil")
            with gr.TabItem("img2img", id="img2img", elem_id="img2img_img2img_tab"):
                init_img = gr.Image(label="Image for img2img", elem_id="img2img_image", type="pil", image_mode="RGBA")
        infotext_utils.add_paste_fields("img2img", init_img, [(prompt, "Prompt"), (negative, "Negative prompt")])
    built = [(txt2img, "txt2img", "txt2img"), (img2img, "img2img", "img2img"), *script_callbacks.ui_tabs_callback()]
    interfaces = {ifid: (interface, label) for interface, label, ifid in built}
    with gr.Blocks(analytics_enabled=False, title="Stable Diffusion") as demo:
        with gr.Tabs(elem_id="tabs"):
            for ifid in TAB_ORDER:
                interface, label = interfaces[ifid]
                with gr.TabItem(label, id=ifid, elem_id=f"tab_{ifid}"):
                    interface.render()
    return demo


def inject_javascript_and_css() -> None:
    """What reload_javascript() does: scripts before </head>, style sheets before </body>."""
    scripts = [STUB / "script.js", *sorted((ROOT / "javascript").glob("*.js"))]
    head = "".join(f"<script>{path.read_text()}</script>" for path in scripts)
    css = f"<style>{(ROOT / 'style.css').read_text()}</style>"
    original = getattr(gr.routes.templates, "easy_diffuser_original", gr.routes.templates.TemplateResponse)
    gr.routes.templates.easy_diffuser_original = original

    def template_response(*args, **kwargs):
        response = original(*args, **kwargs)
        response.body = response.body.replace(b"</head>", f"{head}</head>".encode()).replace(
            b"</body>", f"{css}</body>".encode()
        )
        response.init_headers()
        return response

    gr.routes.templates.TemplateResponse = template_response


def serve(demo: gr.Blocks) -> str:
    """Launch as webui.py does (queue(64), then on_app_started with the app); returns the page's URL."""
    inject_javascript_and_css()
    demo.queue(64)
    app, local_url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, show_error=True)
    # A request the browser left open must not hold demo.close() (a test's teardown) for ever: uvicorn waits for
    # open connections' tasks at shutdown, with no limit unless given one; past it, it cancels them.
    demo.server.config.timeout_graceful_shutdown = 10
    script_callbacks.app_started_callback(demo, app)
    return local_url


def screenshot_tab(
    out: Path, settings: Mapping[str, Any], work: Callable[[Any], None], selector: str = "#tab_easy_diffuser"
) -> int:
    """The pictures in docs/: start the stand-in webui with these settings (an image is extracted on Extract only),
    let `work` use the page (a Playwright page in headless Chromium), then take the tab's picture (or the picture
    of the part `selector` picks) into `out`."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)  # as the page's: a first extraction on a busy machine takes its time

    with tempfile.TemporaryDirectory() as folder:
        load_extension([], Path(folder) / "models")
        for name, value in {"easy_diffuser_extract_on_drop": False, **settings}.items():
            setattr(shared.opts, name, value)
        demo = build_page()
        url = serve(demo)
        try:
            with sync_playwright() as playwright:
                browser = chromium.launch(playwright)
                page = browser.new_page(viewport={"width": 1280, "height": 1100})
                page.set_default_timeout(120_000)
                page.goto(url)
                work(page)
                page.locator(selector).first.screenshot(path=str(out))
                browser.close()
        finally:
            demo.close()
    print(f"wrote {out}")
    return 0


def picture_path(description: str, default: Path, argv: list[str] | None) -> Path:
    """A picture script's command line: --out (the picture's file in docs/ by default)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default)
    return parser.parse_args(argv).out
