"""The batch section's Dataset panel in a real browser: report with its chart, dry run, apply, undo.

Runs under whichever gradio the venv has (3.41.2 as in A1111, 4.40 as in Forge), in Debian's headless Chromium.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

import chromium  # noqa: E402
from modules import shared  # noqa: E402

import webui_host  # noqa: E402  (after the skips: it imports gradio)

PNG = b"\x89PNG\r\n\x1a\n"  # never opened: the names pair images with captions
expect = sync_api.expect
expect.set_options(timeout=30_000)


def make_dataset(folder: Path) -> Path:
    folder.mkdir()
    for name, caption in {"a": b"1girl, red hair\n", "b": b"1girl, smile\n", "c": None}.items():
        (folder / f"{name}.png").write_bytes(PNG)
        if caption is not None:
            (folder / f"{name}.txt").write_bytes(caption)
    return folder


@pytest.fixture(scope="module")
def page_url(models_path, shapes_model):
    webui_host.load_extension([], models_path)
    shared.opts.easy_diffuser_model = shapes_model
    demo = webui_host.build_page()
    yield webui_host.serve(demo)
    demo.close()


@pytest.fixture
def page(page_url):
    if not chromium.CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = chromium.launch(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.set_default_timeout(60_000)
        page.goto(page_url)
        page.locator("#easy_diffuser_batch").get_by_text("Batch: caption a folder", exact=True).click()
        page.locator("#easy_diffuser_dataset").get_by_text("Dataset: tag report and bulk edits", exact=True).click()
        yield page
        browser.close()


def fill(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input[type=text]").first.fill(text)


def test_report_dry_run_apply_and_undo(page, tmp_path):
    folder = make_dataset(tmp_path / "train")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    fill(page, "easy_diffuser_batch_folder", str(folder))
    fill(page, "easy_diffuser_dataset_out", str(tmp_path / "report"))
    page.click("#easy_diffuser_dataset_report_run")
    report = page.locator("#easy_diffuser_dataset_report .easy-diffuser-dataset")
    expect(report).to_contain_text("3 images, 2 with tags, 0 with an empty caption, 1 without a .txt caption")
    expect(report).to_contain_text("Without a caption: c.png")
    expect(report.locator("tr").nth(1)).to_have_text(re.compile(r"1girl\s*2\s*66\.7%"))
    expect(page.locator("#easy_diffuser_dataset_chart img")).to_be_visible()
    assert (tmp_path / "report" / "tags.csv").is_file()

    fill(page, "easy_diffuser_rename", "red hair=red_hair")
    fill(page, "easy_diffuser_add", "mychar")
    fill(page, "easy_diffuser_where", "1girl")
    page.click("#easy_diffuser_dataset_dry_run")
    edited = page.locator("#easy_diffuser_dataset_edit_report .easy-diffuser-dataset-edit")  # gradio 3 repeats ids
    expect(edited).to_contain_text("2 captions would change (0 created), 0 unchanged")
    expect(edited.locator("tr").nth(1)).to_have_text(re.compile(r"a\.txt\s*red hair\s*red_hair, mychar"))
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before

    page.click("#easy_diffuser_dataset_apply")
    expect(edited).to_contain_text("2 captions changed (0 created), 0 unchanged")
    assert (folder / "a.txt").read_bytes() == b"1girl, red_hair, mychar\n"
    assert (folder / "b.txt").read_bytes() == b"1girl, smile, mychar\n"

    page.click("#easy_diffuser_dataset_undo")
    expect(edited).to_contain_text("2 captions restored, 0 removed")
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before


def test_the_panel_reads_the_captions_of_the_batch_sections_extension(page, tmp_path):
    """One extension box for both: the panel had its own, left at .txt while the batch wrote .caption files."""
    folder = make_dataset(tmp_path / "train")
    for caption in folder.glob("*.txt"):
        caption.rename(caption.with_suffix(".caption"))
    fill(page, "easy_diffuser_batch_folder", str(folder))
    fill(page, "easy_diffuser_batch_caption_extension", ".caption")
    fill(page, "easy_diffuser_dataset_out", str(tmp_path / "report"))
    page.click("#easy_diffuser_dataset_report_run")
    report = page.locator("#easy_diffuser_dataset_report .easy-diffuser-dataset")
    expect(report).to_contain_text("3 images, 2 with tags, 0 with an empty caption, 1 without a .caption caption")
    assert page.locator("#easy_diffuser_dataset_extension").count() == 0


def test_a_refusal_is_one_red_line(page, tmp_path):
    folder = make_dataset(tmp_path / "train")
    fill(page, "easy_diffuser_batch_folder", str(folder))
    fill(page, "easy_diffuser_dataset_out", str(folder / "report"))
    page.click("#easy_diffuser_dataset_report_run")
    error = page.locator("#easy_diffuser_dataset_report .easy-diffuser-error")
    expect(error).to_contain_text("lies inside the dataset")
    expect(error).to_have_css("color", "rgb(220, 38, 38)")
    expect(page.locator("#easy_diffuser_dataset_chart img")).to_have_count(0)
    fill(page, "easy_diffuser_remove", "a, , b=c")
    page.click("#easy_diffuser_dataset_undo")
    expect(page.locator("#easy_diffuser_dataset_edit_report .easy-diffuser-error")).to_contain_text("no edit to undo")
    assert not (folder / "report").exists()


def test_the_panel_is_not_built_when_server_folders_are_hidden(models_path, shapes_model):
    def elem_ids() -> set:
        demo = webui_host.build_page()
        return {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}

    webui_host.load_extension([], models_path)
    assert {"easy_diffuser_dataset", "easy_diffuser_dataset_report_run", "easy_diffuser_dataset_undo"} <= elem_ids()
    webui_host.load_extension(["--hide-ui-dir-config"], models_path)
    assert not {name for name in elem_ids() if name.startswith("easy_diffuser_dataset")}
