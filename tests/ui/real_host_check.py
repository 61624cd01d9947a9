"""The extension checked by hand in a real webui (A1111, Forge, Forge Classic, reForge) started with it in
extensions/ and `--api`: not collected by pytest, since CI has no webui. docs/hosts.md says how to start one.

    python tests/ui/real_host_check.py http://127.0.0.1:7860 [--auth user:password] [--check] [--batch] [--booru]

In headless Chromium (Playwright, /usr/bin/chromium): the tab is on the page, Extract fills both prompts, Send to
txt2img and img2img fill their boxes, select their tab and update the token counters, a control reselects; with
options, Check, Batch, Calibrate tau and a tagger's controls. Over HTTP: the route answers, refuses bad input with
4xx, takes `--concurrent` requests at once, and the booru tagger extracts in the host's own timm. Prints one line
per check; exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import chromium  # tests/ui/chromium.py: this script runs from its folder

SAMPLE = Path(__file__).resolve().parents[2] / "docs" / "sample.png"  # a red circle on gray
ROUTE = "/easy-diffuser/v1"


def post(url: str, body: Any, auth: str | None) -> tuple[int, dict]:
    """(status, JSON answer) of a POST; a body that is bytes goes as it is."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def has_red_circle(prompt: str) -> bool:
    words = set(re.split(r"[\s,_()]+", prompt))
    return {"red", "circle"} <= words


def check_http(
    base: str, auth: str | None, concurrent: int, tagger: str, captions: list[str]
) -> list[tuple[str, bool, str]]:
    image = base64.b64encode(SAMPLE.read_bytes()).decode()
    extract = base + ROUTE + "/extract"
    status, answer = post(extract, {"image": image}, auth)
    prompt = answer.get("prompt", "")
    results = [("extract over HTTP", status == 200 and has_red_circle(prompt), f"{status} {prompt!r}")]
    if auth:
        status, answer = post(extract, {"image": image}, None)
        results.append(("refused: no credentials", status == 401, f"{status} {answer.get('detail')}"))
    for style, wanted in (("caption", {"caption": True}), ("sentences", {"prompt_style": "sentences"})):
        if style in captions:
            status, answer = post(extract, {"image": image, **wanted}, auth)
            detail = f"{status} {answer.get('caption') or answer.get('detail')!r}"[:300]
            results.append((f"{style} ({wanted})", status == 200 and bool(answer.get("caption")), detail))
    for name, body, wanted in [
        ("not base64", {"image": "not base64!"}, 400),
        ("no image", {}, 422),
        ("tau out of range", {"image": image, "tau": 99}, 422),
        ("NaN", b'{"image": "x", "tau": NaN}', 400),
        ("unknown model", {"image": image, "model": "no-such-model"}, 400),
    ]:
        status, answer = post(extract, body, auth)
        results.append((f"refused: {name}", status == wanted, f"{status} (wanted {wanted}) {answer.get('detail')}"))
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrent) as pool:
        answers = list(pool.map(lambda _: post(extract, {"image": image}, auth), range(concurrent)))
    good = sum(status == 200 and has_red_circle(answer["prompt"]) for status, answer in answers)
    seconds = time.perf_counter() - started
    results.append((f"{concurrent} concurrent requests", good == concurrent, f"{good} good in {seconds:.1f} s"))
    status, answer = post(extract, {"image": image, "model": tagger}, auth)
    prompt = answer.get("prompt", "")
    results.append((f"booru tagger {tagger}", status == 200 and has_red_circle(prompt), f"{status} {prompt!r}"))
    return results


def check_page(base: str, check: bool, batch: bool, booru: bool) -> list[tuple[str, bool, str]]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)
    results: list[tuple[str, bool, str]] = []
    with sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(base)
        tab = page.locator("#tabs > .tab-nav > button", has_text="Easy Diffuser")
        tab.first.wait_for()
        results.append(("the tab is on the page", tab.count() == 1, f"{tab.count()} tab button(s)"))
        tab.click()
        page.set_input_files("#easy_diffuser_image input[type=file]", str(SAMPLE))
        page.wait_for_selector("#easy_diffuser_image img")
        page.click("#easy_diffuser_extract")
        prompt_box, negative_box = textarea(page, "easy_diffuser_prompt"), textarea(page, "easy_diffuser_neg_prompt")
        expect(prompt_box).to_have_value(re.compile(r"\bred\b"))
        prompt, negative = prompt_box.input_value(), negative_box.input_value()
        filled = has_red_circle(prompt) and (booru or bool(negative))  # shapes-booru's tau leaves no negatives
        results.append(("Extract fills the prompts", filled, f"{prompt!r} / {negative!r}"))
        if booru:
            results += booru_controls(page)
        results += send(page, "txt2img", prompt, negative, check)
        tab.click()
        results += send(page, "img2img", prompt, negative, check)
        pasted = page.locator("#img2img_image img").count()
        results.append(("Send to img2img brings the image", pasted >= 1, f"{pasted} image(s)"))
        tab.click()
        if check:
            results.append(check_in_tab(page))
        if batch:
            results.append(batch_in_tab(page))
        if check and batch:  # a checkpoint, and a folder on the webui's machine
            results.append(calibrate_in_tab(page))
        results.append(live_control(page, booru))
        results.append(("no traceback on the page", "Traceback" not in page.content(), ""))
        browser.close()
    return results


def batch_in_tab(page: Any) -> tuple[str, bool, str]:
    """Caption a folder of this machine (the webui's too) holding the sample: one caption file beside it."""
    import shutil
    import tempfile

    from playwright.sync_api import expect

    folder = Path(tempfile.mkdtemp(prefix="easy-diffuser-batch-"))
    shutil.copy(SAMPLE, folder / "circle.png")
    page.locator("#easy_diffuser_batch").get_by_text("Batch: caption a folder").click()
    textarea(page, "easy_diffuser_batch_folder").fill(str(folder))
    page.click("#easy_diffuser_batch_run")
    expect(page.locator("#easy_diffuser_batch_report .easy-diffuser-status")).to_contain_text("1 captioned")
    caption = (folder / "circle.txt").read_text()
    shutil.rmtree(folder)
    return ("Batch captions a folder", has_red_circle(caption), repr(caption))


def calibrate_in_tab(page: Any) -> tuple[str, bool, str]:
    """Calibrate tau on a folder of two pictures, two taus, at 64x64 and one step; nothing applied."""
    import shutil
    import tempfile

    from PIL import Image, ImageOps
    from playwright.sync_api import expect

    folder = Path(tempfile.mkdtemp(prefix="easy-diffuser-calibrate-"))
    shutil.copy(SAMPLE, folder / "circle.png")
    ImageOps.mirror(Image.open(SAMPLE)).save(folder / "mirrored.png")
    page.locator("#easy_diffuser_calibrate").get_by_text("Calibrate tau", exact=True).click()
    textarea(page, "easy_diffuser_calibrate_folder").fill(str(folder))
    textarea(page, "easy_diffuser_calibrate_taus").fill("0, 1")
    textarea(page, "easy_diffuser_calibrate_negatives").fill("2")
    smallest_generations(page, "easy_diffuser_calibrate")
    page.click("#easy_diffuser_calibrate_run")
    report = page.locator("#easy_diffuser_calibrate_report .easy-diffuser-calibration")
    expect(report).to_contain_text("Best on 2 images")
    shutil.rmtree(folder)
    return ("Calibrate tau generates through the host's txt2img", True, report.inner_text().splitlines()[0])


def live_control(page: Any, booru: bool) -> tuple[str, bool, str]:
    """A control reselects at once: max tags 1 (a tagger's: a general threshold above every tag). Last, as the
    batch and calibration take the tab's values too."""
    from playwright.sync_api import expect

    name, value, wanted = ("general_threshold", 1, r"^(?!.*\bred\b)") if booru else ("max_tags", 1, r"^[^,]+$")
    set_number(page, f"easy_diffuser_{name}", value)
    expect(textarea(page, "easy_diffuser_prompt")).to_have_value(re.compile(wanted))
    return (
        f"a live control reselects ({name} {value})",
        True,
        repr(textarea(page, "easy_diffuser_prompt").input_value()),
    )


def booru_controls(page: Any) -> list[tuple[str, bool, str]]:
    """With a booru tagger as the model setting: its controls in place of max tags, and a family preset that
    reselects at once (Pony's quality prefix leads)."""
    from playwright.sync_api import expect

    shown = {name: page.locator(f"#easy_diffuser_{name}").is_visible() for name in ("general_threshold", "family")}
    hidden = not page.locator("#easy_diffuser_max_tags").is_visible()
    family = page.locator("#easy_diffuser_family input")
    family.click()
    family.fill("pony")
    family.press("Enter")
    expect(textarea(page, "easy_diffuser_prompt")).to_have_value(re.compile(r"^score_9, "))
    prompt = textarea(page, "easy_diffuser_prompt").input_value()
    status = page.locator("#easy_diffuser_status .easy-diffuser-status").last.inner_text()
    family.click()
    family.fill("automatic")  # back, so that what Send checks next is the tags as extracted
    family.press("Enter")
    return [
        ("a tagger's controls are shown, max tags hidden", all(shown.values()) and hidden, repr(shown)),
        ("a family preset reselects (Pony)", "Pony" in status, f"{prompt!r}; {status!r}"[:300]),
    ]


def smallest_generations(page: Any, prefix: str) -> None:
    """64x64 pixels, one step: a CPU generates in a second."""
    for name, value in (("width", 64), ("height", 64), ("steps", 1)):
        set_number(page, f"{prefix}_{name}", value)


def set_number(page: Any, elem_id: str, value: float) -> None:
    """A slider's number box typed into, as a user can (Enter commits it)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def textarea(page: Any, elem_id: str) -> Any:
    return page.locator(f"#{elem_id} textarea")


def send(page: Any, target: str, prompt: str, negative: str, counted: bool) -> list[tuple[str, bool, str]]:
    """Send to txt2img or img2img: the tab selected, both prompts in its boxes; with a checkpoint loaded (its
    tokenizer counts), the token counter counting."""
    from playwright.sync_api import expect

    page.click(f"#easy_diffuser_send_{target}")
    expect(page.locator("#tabs > .tab-nav > button.selected")).to_have_text(re.compile(target, re.I))  # Forge: Txt2img
    sent = (textarea(page, f"{target}_prompt").input_value(), textarea(page, f"{target}_neg_prompt").input_value())
    results = [(f"Send fills {target} and selects it", sent == (prompt, negative), repr(sent))]
    if counted:
        counter = page.locator(f"#{target}_token_counter").last  # gradio 3 repeats an HTML block's id
        expect(counter).to_have_text(re.compile(r"[1-9]\d*/\d+"))
        results.append((f"{target}'s token counter counts the prompt", True, counter.inner_text()))
    return results


def check_in_tab(page: Any) -> tuple[str, bool, str]:
    """Check by generating, at 64x64 and one step (the loaded checkpoint, on the host's txt2img)."""
    from playwright.sync_api import expect

    page.locator("#easy_diffuser_round_trip_settings").get_by_text("Check and Refine settings").click()
    smallest_generations(page, "easy_diffuser_refine")
    page.click("#easy_diffuser_check")
    report = page.locator("#easy_diffuser_round_trip_report .easy-diffuser-round-trip")
    expect(report).to_contain_text("round-trip loss")
    images = page.locator("#easy_diffuser_round_trip_images img").count()
    return ("Check generates through the host's txt2img", images >= 2, f"{images} images (source and generation)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the webui, e.g. http://127.0.0.1:7860")
    parser.add_argument("--auth", help="user:password of the webui's --api-auth")
    parser.add_argument("--concurrent", type=int, default=50, help="requests sent at once (default 50)")
    parser.add_argument("--tagger", default="shapes-booru", help="a booru tagger the route should run")
    parser.add_argument(
        "--batch", action="store_true", help="also caption a folder, and calibrate with --check (the webui runs here)"
    )
    parser.add_argument("--booru", action="store_true", help="the model setting is a booru tagger: check its controls")
    parser.add_argument(
        "--check", action="store_true", help="a checkpoint is loaded: the token counters count, Check generates"
    )
    parser.add_argument(
        "--captions",
        nargs="*",
        default=[],
        choices=["caption", "sentences"],
        help="also caption with BLIP base, or write sentences with the default describer (each placed by hand)",
    )
    parser.add_argument("--no-browser", action="store_true", help="the HTTP checks only")
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")
    checks: list[partial[list[tuple[str, bool, str]]]] = []
    if not args.no_browser:
        checks.append(partial(check_page, base, args.check, args.batch, args.booru))
    checks.append(partial(check_http, base, args.auth, args.concurrent, args.tagger, args.captions))
    failed = 0
    for check in checks:
        try:
            results = check()
        except Exception as error:  # a step that timed out or broke: the rest of that check is not reached
            results = [(check.func.__name__, False, f"{type(error).__name__}: {str(error).splitlines()[0]}")]
        for name, passed, detail in results:
            failed += not passed
            print(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
