"""The webui-free half of the tab: tag cycling, tag bars, option mapping and the shared model service."""
from __future__ import annotations

import threading

import pytest
import torch

from easy_diffuser import ui_helpers
from easy_diffuser.models import ModelError
from easy_diffuser.selection import TagScore


def tag(name: str, role: str, relevance: float = 1.0) -> TagScore:
    return TagScore(name, "colour", 0.3, relevance, role)


TAGS = [tag("red", "positive", 3.0), tag("circle", "positive", 2.0), tag("blue", "negative", 1.1)]


def test_a_click_cycles_positive_negative_off_positive():
    tags, prompt, negative = ui_helpers.cycle_tag(TAGS, "red", weights=False)
    assert (prompt, negative) == ("circle", "red, blue")
    tags, prompt, negative = ui_helpers.cycle_tag(tags, "red", weights=False)
    assert (prompt, negative) == ("circle", "blue")
    tags, prompt, negative = ui_helpers.cycle_tag(tags, "red", weights=False)
    assert (prompt, negative) == ("red, circle", "blue")
    assert tags == TAGS


def test_an_unknown_tag_changes_nothing():
    assert ui_helpers.cycle_tag(TAGS, "green", weights=True)[0] == TAGS


def test_tag_bars_escape_the_text_and_scale_by_relevance():
    bars = ui_helpers.tag_bars_html([tag('a "quoted" <b>tag</b>', "positive", 2.0), tag("half", "negative", 1.0), tag("low", "off", -0.5)])
    assert 'data-tag="a &quot;quoted&quot; &lt;b&gt;tag&lt;/b&gt;"' in bars and "<b>" not in bars
    assert "width:100%" in bars and "width:52%" in bars and "width:4%" in bars
    assert "easy-diffuser-off" in bars
    assert ui_helpers.tag_bars_html([]) == ""


def test_control_values_become_extract_options():
    options = ui_helpers.extract_options(12.0, True, 2.5, 1, 3.0, 5)
    assert (options.max_tags, options.tau, options.weights, options.quality_negatives, options.negatives) == (12, None, True, 3, 5)
    assert ui_helpers.extract_options(12, False, 2.5, False, 0, 8).tau == 2.5


def test_auto_model():
    assert ui_helpers.auto_model(is_sd2=True) == "ViT-H-14/laion2b_s32b_b79k"
    assert ui_helpers.auto_model(is_sd2=False) == "ViT-L-14/openai"


class Recorder:
    """A host: CPU placement that records acquire/release, and a lock for `exclusive`."""

    def __init__(self, model: str, cache_dir) -> None:
        self.model, self.events, self.lock = model, [], threading.Lock()
        self.service = ui_helpers.Service(lambda name: name or self.model, lambda: cache_dir, self.placement, self.exclusive)

    def placement(self) -> ui_helpers.Placement:
        return ui_helpers.Placement(
            torch.device("cpu"), torch.float32, lambda loaded: self.events.append("acquire"), lambda loaded: self.events.append("release")
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
    assert host.service.run(lambda engine: engine) is not first  # switching models dropped the old one
