"""The tab in a real browser, the way a user works it: drop, Extract, click a tag, Send to txt2img/img2img.

Runs under whichever gradio the venv has (3.41.2 as in A1111, 4.40 as in Forge), in Debian's
headless Chromium driven by Playwright.
"""

from __future__ import annotations

import base64
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

import chromium  # noqa: E402
from modules import call_queue, processing, sd_models, shared  # noqa: E402

from easy_diffuser.calibration.shapes_proof import scenes, write_folder  # noqa: E402
from easy_diffuser.engine import calibration_path  # noqa: E402

import webui_host  # noqa: E402  (after the skips: it imports gradio)

SAMPLE = Path(__file__).resolve().parents[2] / "docs" / "sample.png"  # a red circle, the README's sample
WEIGHTED = "(red:1.20), (circle:1.10), (star:0.90)"  # the infotext paste path would turn this into an empty prompt
TIMEOUT_MS = 60_000
expect = sync_api.expect
expect.set_options(timeout=20_000)  # the first extraction loads the model on a busy 2-core machine


@pytest.fixture(scope="module")
def page_url(models_path, shapes_model):
    webui_host.load_extension([], models_path)
    shared.opts.easy_diffuser_model = shapes_model
    demo = webui_host.build_page()
    yield webui_host.serve(demo)
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if not chromium.CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, page_url):
    shared.opts.easy_diffuser_extract_on_drop = False
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(page_url)
    page.wait_for_selector("#easy_diffuser_extract")
    yield page
    page.close()


def textarea(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea")


def selected_tab(page, tabs_id: str = "tabs"):
    return page.locator(f"#{tabs_id} > .tab-nav > button.selected")


def upload(page, image: Path) -> None:
    page.set_input_files("#easy_diffuser_image input[type=file]", str(image))
    page.wait_for_selector("#easy_diffuser_image img")


def extract(page) -> str:
    page.click("#easy_diffuser_extract")
    expect(textarea(page, "easy_diffuser_prompt")).to_have_value(re.compile(r"\bred\b"))
    return textarea(page, "easy_diffuser_prompt").input_value()


def test_extract_click_a_tag_and_send_to_txt2img(page, red_circle, tmp_path):
    upload(page, red_circle)
    prompt = extract(page)
    assert "circle" in prompt
    status = page.locator("#easy_diffuser_status .easy-diffuser-status")
    expect(status).to_contain_text(re.compile(r"tau -?\d\.\d\d \(.+\)"))
    # The README's docs/screenshot.png is this picture under gradio 3 (the A1111 look), copied by hand.
    page.locator("#tab_easy_diffuser").screenshot(path=str(tmp_path / "screenshot.png"))
    counts = re.search(r"(\d+) positive, (\d+) negative tags", status.inner_text())
    positives, negatives = int(counts[1]), int(counts[2])

    circle = page.locator('#easy_diffuser_tags .easy-diffuser-tag[data-tag="circle"]')
    expect(circle).to_have_class(re.compile("easy-diffuser-positive"))
    circle.click()  # positive -> negative
    expect(circle).to_have_class(re.compile("easy-diffuser-negative"))
    expect(status).to_contain_text(f"{positives - 1} positive, {negatives + 1} negative tags")  # the line follows
    assert "circle" not in textarea(page, "easy_diffuser_prompt").input_value().split(", ")
    assert "circle" in textarea(page, "easy_diffuser_neg_prompt").input_value().split(", ")
    circle.click()  # negative -> off
    expect(circle).to_have_class(re.compile("easy-diffuser-off"))
    assert "circle" not in textarea(page, "easy_diffuser_neg_prompt").input_value().split(", ")

    prompt, negative = (
        textarea(page, "easy_diffuser_prompt").input_value(),
        textarea(page, "easy_diffuser_neg_prompt").input_value(),
    )
    page.click("#easy_diffuser_send_txt2img")
    expect(selected_tab(page)).to_have_text("txt2img")  # found by its label although it is the third tab
    expect(textarea(page, "txt2img_prompt")).to_have_value(prompt)
    expect(textarea(page, "txt2img_neg_prompt")).to_have_value(negative)
    expect(page.locator("#tab_txt2img")).to_be_visible()
    assert page.evaluate("window.tokenCountersUpdated") == ["txt2img"]


def test_a_weighted_one_line_prompt_arrives_intact(page):
    textarea(page, "easy_diffuser_prompt").fill(WEIGHTED)
    textarea(page, "easy_diffuser_neg_prompt").fill("blurry, (lowres:1.10)")
    page.click("#easy_diffuser_send_txt2img")
    expect(selected_tab(page)).to_have_text("txt2img")
    expect(textarea(page, "txt2img_prompt")).to_have_value(WEIGHTED)
    expect(textarea(page, "txt2img_neg_prompt")).to_have_value("blurry, (lowres:1.10)")


def test_send_to_img2img_brings_the_image(page, red_circle):
    upload(page, red_circle)
    prompt = extract(page)
    page.click("#easy_diffuser_send_img2img")
    expect(selected_tab(page)).to_have_text("img2img")
    expect(selected_tab(page, "mode_img2img")).to_have_text("img2img")
    expect(textarea(page, "img2img_prompt")).to_have_value(prompt)
    expect(page.locator("#img2img_image img")).to_be_visible()
    assert page.evaluate("window.tokenCountersUpdated") == ["img2img"]


def test_dropping_an_image_extracts_it(page, red_circle):
    shared.opts.easy_diffuser_extract_on_drop = True
    data = base64.b64encode(red_circle.read_bytes()).decode()
    page.evaluate(
        """([data, name]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: "image/png"}));
            const zone = gradioApp().querySelector("#easy_diffuser_image input[type=file]").parentElement;
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
            }
        }""",
        [data, red_circle.name],
    )
    expect(textarea(page, "easy_diffuser_prompt")).to_have_value(re.compile(r"\bred\b.*\bcircle\b|\bcircle\b.*\bred\b"))


def test_weights_that_cannot_be_had_give_a_message_not_a_traceback(page, red_circle, tmp_path, shapes_model):
    upload(page, red_circle)
    shared.opts.easy_diffuser_model = str(tmp_path / "ViT-L-14-openai.safetensors")
    try:
        page.click("#easy_diffuser_extract")
        error = page.locator("#easy_diffuser_status .easy-diffuser-error")
        expect(error).to_contain_text("no such checkpoint file")
        expect(error).to_have_css("color", "rgb(220, 38, 38)")  # red, over gradio's own text colour
    finally:
        shared.opts.easy_diffuser_model = shapes_model
    assert "Traceback" not in page.content()
    assert textarea(page, "easy_diffuser_prompt").input_value() == ""


def test_calibrate_stops_on_stop_and_goes_on_when_pressed_again(page, tmp_path, models_path, monkeypatch):
    """Stop is unqueued, so it must get through while the calibration holds the queue (gradio 3 and 4)."""
    write_folder(tmp_path / "scenes", scenes(8, seed=3))
    saved = calibration_path(models_path / "easy_diffuser", "shapes-demo")
    generate, calls = processing.process_images, []

    def slow(p):  # a checkpoint takes its time: room to press Stop
        calls.append(p)
        time.sleep(0.2)
        return generate(p)

    monkeypatch.setattr(processing, "process_images", slow)
    monkeypatch.setattr(sd_models, "checkpoints_list", {"stand-in.safetensors": object()})
    try:
        page.locator("#easy_diffuser_calibrate").get_by_text("Calibrate tau", exact=True).click()
        textarea(page, "easy_diffuser_calibrate_folder").fill(str(tmp_path / "scenes"))
        textarea(page, "easy_diffuser_calibrate_taus").fill("0, 1")
        textarea(page, "easy_diffuser_calibrate_negatives").fill("2")
        page.click("#easy_diffuser_calibrate_run")
        _wait_for(lambda: len(calls) >= 3)
        page.click("#easy_diffuser_calibrate_stop")
        stopped = page.locator("#easy_diffuser_calibrate_report .easy-diffuser-status")  # gradio 3 repeats the id
        expect(stopped).to_contain_text(re.compile(r"Stopped after \d+ of \d+ generations"))
        assert not saved.exists()
        monkeypatch.setattr(processing, "process_images", generate)
        page.click("#easy_diffuser_calibrate_run")
        report = page.locator("#easy_diffuser_calibrate_report .easy-diffuser-calibration")
        expect(report).to_contain_text("Best on 8 images")
        expect(report.locator(".easy-diffuser-best")).to_have_count(1)
        expect(page.locator("#easy_diffuser_calibrate_plot img")).to_be_visible()
        expect(page.locator("#easy_diffuser_calibrate_grid img")).to_be_visible()
        assert not saved.exists()  # a candidate: nothing changes until Apply
        page.click("#easy_diffuser_calibrate_apply")
        expect(page.locator("#easy_diffuser_status .easy-diffuser-status")).to_contain_text("(calibrated")
        assert saved.exists()
    finally:
        shutil.rmtree(saved.parent, ignore_errors=True)  # the other tests extract with the shipped tau


def set_slider(page, elem_id: str, value: float) -> None:
    """Type a value into the slider's number box, as a user can (Enter commits it)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def tag_count(page, elem_id: str) -> int:
    text = textarea(page, elem_id).input_value()
    return len([tag for tag in text.split(", ") if tag])


def test_every_control_reselects_at_once_without_extract_and_outside_the_queue(page, red_circle, monkeypatch):
    from easy_diffuser.engine import Engine

    tau = page.locator("#easy_diffuser_tau input[type=number]")
    expect(tau).to_have_value("-1")  # the tau in force before any extraction (shapes-demo's own), not 1
    expect(page.locator("#easy_diffuser_negatives input[type=number]")).to_have_value("8")
    upload(page, red_circle)
    extract(page)
    expect(tau).to_have_value("-1")  # shapes-demo's tau, in force with Automatic on
    expect(tau).to_be_disabled()  # automatic locks it
    expect(page.locator("#easy_diffuser_negatives input[type=number]")).to_be_disabled()
    forward_passes = []
    monkeypatch.setattr(Engine, "encode", lambda *args: forward_passes.append(args))
    with call_queue.queue_lock:  # a generation holds the queue; the controls still answer
        set_slider(page, "easy_diffuser_max_tags", 1)
        expect(textarea(page, "easy_diffuser_prompt")).to_have_value(re.compile(r"^[^,]+$"))  # one tag
        page.locator("#easy_diffuser_auto_tau input").uncheck()  # manual: the sliders unlock at the values in force
        expect(tau).to_be_enabled()
        expect(tau).to_have_value("-1")
        expect(page.locator("#easy_diffuser_status .easy-diffuser-status")).to_contain_text("(option)")
        set_slider(page, "easy_diffuser_negatives", 2)
        _wait_for(lambda: tag_count(page, "easy_diffuser_neg_prompt") == 2)  # shapes-demo has no quality tags
        set_slider(page, "easy_diffuser_tau", 5)  # above every tag: the status says so at once
        expect(page.locator("#easy_diffuser_status .easy-diffuser-status")).to_contain_text("tau 5.00 (option)")
        page.locator("#easy_diffuser_auto_tau input").check()  # automatic again: back to the model's tau, locked
        expect(tau).to_have_value("-1")
        expect(tau).to_be_disabled()
    assert forward_passes == []


def test_tag_labels_are_not_covered_by_their_bars(page, red_circle):
    upload(page, red_circle)
    extract(page)
    for row in page.locator("#easy_diffuser_tags .easy-diffuser-tag").all():
        label, bar = row.locator(".easy-diffuser-role").bounding_box(), row.locator(".easy-diffuser-bar").bounding_box()
        assert bar["y"] >= label["y"] + label["height"], "the bar overlaps the role's word"


def test_a_long_error_wraps_instead_of_widening_the_page(page, red_circle, tmp_path, shapes_model):
    page.set_viewport_size({"width": 1400, "height": 1000})
    upload(page, red_circle)
    unbroken = tmp_path / ("https-huggingface.co-" + "x" * 200 + ".safetensors")
    shared.opts.easy_diffuser_model = str(unbroken)
    try:
        page.click("#easy_diffuser_extract")
        expect(page.locator("#easy_diffuser_status .easy-diffuser-error")).to_contain_text("x" * 200)
    finally:
        shared.opts.easy_diffuser_model = shapes_model
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400


def test_calibrate_without_a_checkpoint_shows_one_line(page, tmp_path, monkeypatch):
    write_folder(tmp_path / "scenes", scenes(4, seed=3))
    monkeypatch.setattr(sd_models, "checkpoints_list", {})
    calls = []
    monkeypatch.setattr(processing, "process_images", calls.append)
    page.locator("#easy_diffuser_calibrate").get_by_text("Calibrate tau", exact=True).click()
    textarea(page, "easy_diffuser_calibrate_folder").fill(str(tmp_path / "scenes"))
    page.click("#easy_diffuser_calibrate_run")
    error = page.locator("#easy_diffuser_calibrate_report .easy-diffuser-error")
    expect(error).to_contain_text("has none: put one in models/Stable-diffusion")
    expect(page.locator("#easy_diffuser_calibrate_report p")).to_have_count(1)
    assert calls == []


def _wait_for(condition, seconds: float = TIMEOUT_MS / 1000) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_style_control_puts_the_description_first_and_switches_back_without_extract(
    page, red_circle, describer_placed, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the tiny random describer is placed as the default one
    status = page.locator("#easy_diffuser_status .easy-diffuser-status")
    style = page.locator("#easy_diffuser_prompt_style")
    expect(style).to_contain_text("automatic")
    upload(page, red_circle)
    tags = extract(page)  # automatic, no checkpoint loaded: tags
    expect(status).to_contain_text("prompt style tags (automatic: tags, as no checkpoint is known)")
    style.get_by_text("sentences", exact=True).click()
    expect(status).to_contain_text("needs a description of this image: press Extract")
    page.click("#easy_diffuser_extract")
    expect(status).to_contain_text("prompt style sentences (chosen)")
    described = textarea(page, "easy_diffuser_prompt").input_value()
    assert described.endswith(" " + tags) and len(described) > len(tags) + 1  # the description, then the tags
    style.get_by_text("tags", exact=True).click()  # back: the same description, now cut into one CLIP chunk
    expect(status).to_contain_text("prompt style tags (chosen)")
    as_tags = textarea(page, "easy_diffuser_prompt").input_value()
    assert as_tags != described and as_tags.endswith(", " + tags)


def round_trip_report(page):
    return page.locator("#easy_diffuser_round_trip_report .easy-diffuser-round-trip")  # gradio 3 repeats the id


def test_check_and_refine_work_on_the_prompt_boxes_as_they_stand(page, red_circle, monkeypatch):
    monkeypatch.setattr(sd_models, "checkpoints_list", {"stand-in.safetensors": object()})
    before = len(processing.calls)
    upload(page, red_circle)
    textarea(page, "easy_diffuser_prompt").fill("blue, square")  # a hand edit, no extraction
    page.click("#easy_diffuser_check")
    report = round_trip_report(page)
    expect(report).to_contain_text("round-trip loss: how far the tags", timeout=TIMEOUT_MS)  # may load the model
    lost = report.locator("tr:nth-child(2) td:nth-child(4)")
    expect(lost).to_contain_text("red")
    expect(report.locator("tr:nth-child(2) td:nth-child(5)")).to_contain_text("blue")  # added
    expect(page.locator("#easy_diffuser_round_trip_images img")).to_have_count(2)  # source | generation
    assert textarea(page, "easy_diffuser_prompt").input_value() == "blue, square"  # Check changes no prompt
    assert len(processing.calls) == before + 1 and processing.calls[-1].do_not_save_samples

    textarea(page, "easy_diffuser_prompt").fill("red")
    page.click("#easy_diffuser_refine")
    expect(report).to_contain_text(re.compile(r"Best: round [1-9]"))
    expect(report.locator(".easy-diffuser-best")).to_have_count(1)
    expect(textarea(page, "easy_diffuser_prompt")).to_have_value(re.compile(r"\bcircle\b"))  # the best pair
    assert page.locator("#easy_diffuser_round_trip_images img").count() >= 3
    # docs/webui.md's docs/refine-tab.png is this view under gradio 3 (tests/ui/screenshot_refine.py takes it).


def test_refine_stop_keeps_the_finished_rounds(page, red_circle, monkeypatch):
    generate, calls = processing.process_images, []

    def slow(p):
        calls.append(p)
        time.sleep(0.3)
        return generate(p)

    monkeypatch.setattr(processing, "process_images", slow)
    monkeypatch.setattr(sd_models, "checkpoints_list", {"stand-in.safetensors": object()})
    upload(page, red_circle)
    textarea(page, "easy_diffuser_prompt").fill("blue")
    page.click("#easy_diffuser_refine")
    _wait_for(lambda: len(calls) >= 3)  # round 0 (2 seeds) is scored, round 1 is generating
    page.click("#easy_diffuser_refine_stop")
    report = round_trip_report(page)
    expect(report).to_contain_text("Stopped: the finished rounds are kept", timeout=TIMEOUT_MS)
    expect(report.locator("tr")).not_to_have_count(1)  # the header and at least round 0
    assert len(calls) < 10


def test_check_without_a_checkpoint_shows_one_line_and_generates_nothing(page, red_circle, monkeypatch):
    monkeypatch.setattr(sd_models, "checkpoints_list", {})
    calls = []
    monkeypatch.setattr(processing, "process_images", calls.append)
    upload(page, red_circle)
    textarea(page, "easy_diffuser_prompt").fill("red, circle")
    page.click("#easy_diffuser_check")
    error = page.locator("#easy_diffuser_round_trip_report .easy-diffuser-error")
    expect(error).to_contain_text("the webui has none: put one in models/Stable-diffusion", timeout=TIMEOUT_MS)
    expect(page.locator("#easy_diffuser_round_trip_report p")).to_have_count(1)
    assert calls == []


def loaded_checkpoint(name: str) -> SimpleNamespace:
    """The webui's loaded checkpoint as the host reads it (sd_models.model_data.sd_model)."""
    return SimpleNamespace(sd_checkpoint_info=SimpleNamespace(filename=name, title=name))


def choose(page, elem_id: str, choice: str) -> None:
    """Pick a dropdown's choice as a user can: type it, Enter."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(choice)
    box.press("Enter")


@pytest.fixture
def tagger_chosen(shapes_model):
    """The model setting set to shapes-booru, the shipped tiny tagger, after the page was built for shapes-demo."""
    shared.opts.easy_diffuser_model = "shapes-booru"
    yield
    shared.opts.easy_diffuser_model = shapes_model


def test_a_tagger_shows_its_controls_and_its_thresholds_preset_and_mcut_reselect_without_the_model(
    page, tagger_chosen, monkeypatch
):
    from easy_diffuser.kinds.wd_tagger import TaggerScorer

    prompt, status = textarea(page, "easy_diffuser_prompt"), page.locator("#easy_diffuser_status .easy-diffuser-status")
    booru_controls = [page.locator(f"#easy_diffuser_{name}") for name in ("general_threshold", "general_mcut")]
    booru_controls.append(page.locator("#easy_diffuser_family"))
    max_tags = page.locator("#easy_diffuser_max_tags")
    for control in booru_controls:
        expect(control).to_be_hidden()  # the page was built for shapes-demo, a CLIP model
    expect(max_tags).to_be_visible()
    monkeypatch.setattr(sd_models.model_data, "sd_model", loaded_checkpoint("ponyDiffusionV6XL.safetensors"))
    upload(page, SAMPLE)
    tags = extract(page).split(", ")
    assert {"red", "circle"} <= set(tags) and tags[0] == "score_9"  # Pony's quality prefix, then the image's tags
    expect(status).to_contain_text("preset: Pony (from the checkpoint name ponyDiffusionV6XL)")
    for control in booru_controls:
        expect(control).to_be_visible()
    expect(max_tags).to_be_hidden()  # a tagger's thresholds decide how many tags go in

    forward_passes = []
    monkeypatch.setattr(TaggerScorer, "features", lambda *args: forward_passes.append(args))
    with call_queue.queue_lock:  # a generation holds the queue; the controls still answer
        set_slider(page, "easy_diffuser_general_threshold", 1)  # above every general tag's probability
        expect(prompt).not_to_have_value(re.compile(r"\bred\b"))
        assert "circle" not in prompt.input_value().split(", ")
        assert "rating_safe" in prompt.input_value().split(", ")  # the rating is not a general tag
        page.locator("#easy_diffuser_general_mcut input").check()  # MCut decides instead of the slider
        expect(prompt).to_have_value(re.compile(r"\bred, circle\b"))
        choose(page, "easy_diffuser_family", "illustrious")  # the setting overrides the checkpoint's name
        expect(status).to_contain_text("preset: Illustrious/NoobAI (chosen in the settings)")
        expect(prompt).to_have_value(re.compile(r"^masterpiece, best quality, .*\bred, circle\b"))
    assert forward_passes == []


def test_the_tag_lists_put_tags_first_and_leave_tags_out_without_the_model(page, red_circle, monkeypatch):
    from easy_diffuser.engine import Engine

    prompt, status = textarea(page, "easy_diffuser_prompt"), page.locator("#easy_diffuser_status .easy-diffuser-status")
    upload(page, red_circle)
    tags = extract(page).split(", ")
    assert "large" in tags and tags[0] != "large"
    forward_passes = []
    monkeypatch.setattr(Engine, "encode", lambda *args: forward_passes.append(args))
    first = textarea(page, "easy_diffuser_first_tags")
    first.fill("large")
    first.press("Enter")
    expect(prompt).to_have_value(re.compile(r"^large, "))
    exclude = textarea(page, "easy_diffuser_exclude_tags")
    exclude.fill("red")
    exclude.blur()  # leaving the box counts as much as Enter
    expect(prompt).not_to_have_value(re.compile(r"\bred\b"))
    chosen = prompt.input_value()
    assert chosen.startswith("large, ")
    exclude.fill("red,\tcircle")  # a tab is no printable character
    exclude.blur()
    expect(status).to_contain_text("exclude_tags: must be comma-separated tags, at most 4000 printable characters")
    assert prompt.input_value() == chosen
    assert forward_passes == []


def test_the_batch_section_shows_the_caption_file_options_and_writes_what_they_say(page, tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    shutil.copy(SAMPLE, folder / "circle.png")
    (folder / "circle.caption").write_text("my words, Red\n")
    page.locator("#easy_diffuser_batch").get_by_text("Batch: caption a folder", exact=True).click()
    extension, separator = (
        textarea(page, "easy_diffuser_batch_caption_extension"),
        textarea(page, "easy_diffuser_batch_separator"),
    )
    expect(extension).to_have_value(".txt")  # the schema's defaults
    expect(separator).to_have_value(", ")
    expect(page.locator("#easy_diffuser_batch_existing input[value=skip]")).to_be_checked()
    expect(page.locator("#easy_diffuser_batch_underscores input[value=spaces]")).to_be_checked()
    expect(page.locator("#easy_diffuser_batch_escape_parentheses input[type=checkbox]")).to_be_checked()
    for name in ("character_first", "character_expand"):
        expect(page.locator(f"#easy_diffuser_batch_{name} input[type=checkbox]")).not_to_be_checked()
    textarea(page, "easy_diffuser_batch_folder").fill(str(folder))
    extension.fill(".caption")
    page.locator("#easy_diffuser_batch_existing").get_by_label("append").check()
    textarea(page, "easy_diffuser_batch_trigger").fill("ohwx")
    textarea(page, "easy_diffuser_batch_replace_tags").fill("circle,ring")
    page.click("#easy_diffuser_batch_run")
    report = page.locator("#easy_diffuser_batch_report .easy-diffuser-status")
    expect(report).to_contain_text("1 captioned")
    text = (folder / "circle.caption").read_text()
    assert text.startswith("ohwx, my words, Red, ring, ") and text.endswith("\n") and "circle" not in text
    assert sorted(path.name for path in folder.iterdir()) == ["circle.caption", "circle.png"]
    page.click("#easy_diffuser_batch_run")  # a second run has every tag there: the file stays as it is
    expect(report).to_contain_text("1 unchanged")
    extension.fill(".png")
    page.click("#easy_diffuser_batch_run")
    expect(report).to_contain_text("caption_extension: must be a file extension such as .txt or .caption")
    assert (folder / "circle.caption").read_text() == text
