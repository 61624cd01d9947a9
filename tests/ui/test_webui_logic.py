"""The webui-free half of the tab: tag cycling, tag bars, option mapping and the shared model service."""

from __future__ import annotations

import threading

import pytest
import torch

from easy_diffuser.calibration.sweep import (
    DEFAULT_TAUS,
    NO_NEGATIVES,
    WHOLE_VOCABULARY,
    WHOLE_VOCABULARY_LABEL,
    Calibration,
    Row,
    Setting,
)
from easy_diffuser.engine import Extraction
from easy_diffuser.errors import ModelError
from easy_diffuser.options import CaptionOptions, ExtractOptions, OptionError
from easy_diffuser.selection import TagScore
from easy_diffuser.webui import controls, markup, service


def tag(name: str, role: str, relevance: float = 1.0) -> TagScore:
    return TagScore(name, "colour", 0.3, relevance, role)


TAGS = [tag("red", "positive", 3.0), tag("circle", "positive", 2.0), tag("blue", "negative", 1.1)]


def extracted(tags=TAGS, caption: str = "") -> controls.Extracted:
    captioning = CaptionOptions() if caption else None
    result = Extraction("", "", list(tags), "shapes-demo", 1.0, "option", caption=caption)
    return controls.Extracted("shapes-demo", torch.zeros(1, 4), captioning, 2, result)


def test_a_click_cycles_positive_negative_off_positive():
    state = controls.cycle_tag(extracted(), "red")
    assert controls.tab_prompts(state, weights=False) == ("circle", "red, blue")
    state = controls.cycle_tag(state, "red")
    assert controls.tab_prompts(state, weights=False) == ("circle", "blue")
    state = controls.cycle_tag(state, "red")
    assert controls.tab_prompts(state, weights=False) == ("red, circle", "blue")
    assert state.result.tags == TAGS


def test_an_unknown_tag_changes_nothing():
    assert controls.cycle_tag(extracted(), "green").result.tags == TAGS


def test_the_caption_stays_in_front_after_a_click():
    state = controls.cycle_tag(extracted(caption="a red circle"), "circle")
    assert controls.tab_prompts(state, weights=False) == ("a red circle, red", "circle, blue")


def test_tag_bars_escape_the_text_and_scale_by_relevance():
    bars = markup.tag_bars_html(
        [tag('a "quoted" <b>tag</b>', "positive", 2.0), tag("half", "negative", 1.0), tag("low", "off", -0.5)]
    )
    assert 'data-tag="a &quot;quoted&quot; &lt;b&gt;tag&lt;/b&gt;"' in bars and "<b>" not in bars
    assert "width:100%" in bars and "width:52%" in bars and "width:4%" in bars
    assert "easy-diffuser-off" in bars
    assert markup.tag_bars_html([]) == ""


TAB = {
    "max_tags": 12.0,
    "auto_tau": True,
    "tau": 2.5,
    "negatives": 5.0,
    "quality_negatives": 3.0,
    "general_threshold": 0.35,
    "character_threshold": 0.85,
    "general_mcut": False,
    "character_mcut": False,
    "family": "automatic",
    "exclude_tags": "",
    "first_tags": "",
    "weights": True,
    "caption": False,
    "caption_model": "Salesforce/blip-image-captioning-base",
    "prompt_style": "automatic",
}


def test_control_values_become_extract_options():
    options = controls.extract_options(TAB)
    assert (options.max_tags, options.tau, options.weights, options.quality_negatives) == (12, None, True, 3)
    assert options.negatives == ExtractOptions().negatives  # automatic: the engine resolves the count with tau
    assert isinstance(options.max_tags, int)  # sliders give 12.0; the schema makes it a count
    manual = controls.extract_options({**TAB, "auto_tau": False})
    assert (manual.tau, manual.negatives, manual.caption) == (2.5, 5, None)
    captioned = controls.extract_options({**TAB, "caption": True}, {"beams": 2})
    assert captioned.caption == CaptionOptions(TAB["caption_model"], beams=2)
    joy = controls.extract_options({**TAB, "caption": True}, {"mode": "Danbooru", "length": "40"})  # Settings
    assert (joy.caption.mode, joy.caption.length) == ("danbooru", "40")
    booru = controls.extract_options({**TAB, "general_mcut": True, "family": "pony", "general_threshold": 0.5})
    assert (booru.general_mcut, booru.character_mcut, booru.family) == (True, False, "pony")
    assert booru.general_threshold == 0.5
    with pytest.raises(OptionError, match="family"):  # a choice the schema does not know
        controls.extract_options({**TAB, "family": "sd15"})


def test_the_tab_shows_a_taggers_controls_for_a_tagger_and_clips_for_clip():
    tagger, clip = controls.shown_for("wd-tagger"), controls.shown_for("clip")
    assert tagger["general_threshold"] and tagger["family"] and not tagger["max_tags"]
    assert clip["max_tags"] and not clip["character_mcut"] and not clip["family"]
    with pytest.raises(ValueError, match="max_tags: must be a whole number from 1 to 75, not 12.5"):
        controls.extract_options({**TAB, "max_tags": 12.5})


def test_auto_model():
    assert service.auto_model(is_sd2=True) == "ViT-H-14/laion2b_s32b_b79k"
    assert service.auto_model(is_sd2=False) == "ViT-L-14/openai"


def test_the_calibration_fields_read_numbers_and_explain_bad_input():
    assert controls.parse_taus(" -1, 0.5 0.5;2 ") == (-1.0, 0.5, 2.0)  # commas, spaces or semicolons; repeats once
    assert controls.parse_negatives("2 4") == (2, 4)
    assert controls.parse_taus(controls.numbers_text(DEFAULT_TAUS)) == DEFAULT_TAUS  # the defaults shown read back
    for parse, text, message in [
        (controls.parse_taus, "", "enter at least one number"),
        (controls.parse_taus, "0, high", "'high' is not a number"),
        (controls.parse_taus, "nan", "not a finite number"),
        (controls.parse_negatives, "2.5", "'2.5' is not a whole number"),
        (controls.parse_negatives, "-1", "negatives: -1 is out of range: each must be from 0 to 75"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse(text)


def test_the_calibration_report_marks_the_best_and_names_each_baseline(tmp_path):
    def row(tau, negatives, loss, label=""):
        return Row(Setting(tau, negatives, label), loss, 0.8, [loss], [("red", "blue")])

    rows = [row(0.0, 2, 1.0), row(1.0, 2, 1.5)]
    baselines = [
        row(0.0, 0, 1.6, NO_NEGATIVES),
        row(WHOLE_VOCABULARY, 2, 1.4, WHOLE_VOCABULARY_LABEL),
        row(WHOLE_VOCABULARY, 4, 1.3, WHOLE_VOCABULARY_LABEL),
    ]
    result = Calibration(
        "shapes-demo", "shapes", rows, baselines, rows[0], [tmp_path / "a.png"], path=tmp_path / "<m>.json"
    )
    text = markup.calibration_html(result)
    assert "Best on 1 images: <b>tau 0, 2 negatives</b> (loss 1.0000)" in text
    assert (
        '<tr class="easy-diffuser-best"><td>tau 0, 2 negatives</td>' in text and text.count("easy-diffuser-best") == 1
    )
    # The summary compares the fairer of the two whole-vocabulary rows, and says by how much the choice wins.
    assert "<p>baseline whole-vocabulary lowest, 4 negatives vs chosen, on the 1 image: loss 1.3000 vs 1.0000" in text
    assert "the chosen setting is better by 0.3000</p>" in text and "BEATS" not in text
    assert "<td>whole-vocabulary lowest, 2 negatives</td>" in text  # the table keeps every row
    assert "<p>baseline no negative prompt vs chosen, on the 1 image: loss 1.6000 vs 1.0000" in text
    assert "press <b>Apply</b>" in text
    assert "&lt;m&gt;.json" in text and "<m>" not in text
    assert "after 4 of 9 generations" in markup.calibration_stopped_html(4, 9)


class Recorder:
    """A host: CPU placement that records acquire/release, and a lock for `exclusive`."""

    def __init__(self, model: str, cache_dir) -> None:
        self.model, self.events, self.lock = model, [], threading.Lock()
        self.service = service.Service(
            lambda name: name or self.model, lambda: cache_dir, self.placement, self.exclusive
        )

    def placement(self) -> service.Placement:
        return service.Placement(
            torch.device("cpu"),
            torch.float32,
            lambda loaded: self.events.append("acquire"),
            lambda loaded: self.events.append("release"),
        )

    def exclusive(self, work):
        with self.lock:
            return work()


def test_the_service_keeps_one_engine_and_releases_the_model_even_on_errors(shapes_model, tmp_path):
    host = Recorder(shapes_model, tmp_path)
    first = host.service.run(lambda engine: engine)
    assert host.service.run(lambda engine: engine) is first
    with pytest.raises(ZeroDivisionError):
        host.service.run(lambda engine: 1 / 0)
    assert host.events == ["acquire", "release"] * 3
    with pytest.raises(ModelError):
        host.service.run(lambda engine: engine, model=str(tmp_path / "missing.safetensors"))
    assert host.service.run(lambda engine: engine) is first  # weights that can't be had leave the working model loaded


def test_the_threshold_sliders_reselect_a_taggers_tags_without_the_model(tmp_path, monkeypatch):
    from PIL import Image

    from easy_diffuser.engine import Engine

    from taggers import logits_for, write_tagger

    logits = logits_for({"general": 0.9, "1girl": 0.95, "smile": 0.5, "saber_(fate)": 0.8})
    engine = Engine(str(write_tagger(tmp_path / "wd", "vit", logits=logits)), cache_dir=tmp_path / "cache")
    plain = {**TAB, "weights": False}
    kept = controls.extract(engine, Image.new("RGB", (40, 20), "red"), controls.extract_options(plain))
    assert kept.result.prompt == "1girl, general, smile"  # saber 0.8 < the character threshold 0.85

    def no_forward_pass(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(engine.scorer, "features", no_forward_pass)
    moved = {**plain, "general_threshold": 0.6, "character_threshold": 0.75}
    again = controls.reselect(engine, kept, controls.extract_options(moved))
    assert again.result.prompt == r"1girl, saber \(fate\), general"
