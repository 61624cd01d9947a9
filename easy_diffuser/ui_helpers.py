"""The webui tab's logic, free of webui and gradio imports so it runs and is tested anywhere.

`Service` owns the one engine that the tab and the HTTP routes share. The webui adapter
(scripts/easy_diffuser_tab.py) gives it the host's rules: which model, where it runs, how to make
room on the GPU, and the queue lock that keeps it from running beside image generation.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

import torch

from .batch import BatchSummary
from .calibration import Calibration, Row
from .captioner import CaptionOptions
from .embedding import ProgressFn
from .engine import Engine, ExtractOptions, Extraction
from .models import LoadedModel, load_model, unload_models
from .prompt import prompts
from .selection import Role, TagScore, with_role

T = TypeVar("T")

AUTO = "Auto"  # the model setting that follows the loaded checkpoint
SD2_MODEL = "ViT-H-14/laion2b_s32b_b79k"  # SD 2.x conditions on OpenCLIP ViT-H/14
SD1_MODEL = "ViT-L-14/openai"  # SD 1.x, and SDXL's first text encoder, use OpenAI's ViT-L/14
NEXT_ROLE: dict[Role, Role] = {"positive": "negative", "negative": "off", "off": "positive"}


def auto_model(is_sd2: bool) -> str:
    return SD2_MODEL if is_sd2 else SD1_MODEL


@dataclass(frozen=True)
class Placement:
    """Where the host wants the model, and its hooks around every use."""

    device: torch.device
    dtype: torch.dtype
    acquire: Callable[[LoadedModel], None]  # before a use: make room, put the model on `device`
    release: Callable[[LoadedModel], None]  # after a use: move it off unless the user keeps it
    keep_in_vram: bool = False  # the captioner, too, stays on the device between uses


class Service:
    """One engine, loaded on first use, every use run through `exclusive` (the webui's queue lock)."""

    def __init__(
        self,
        resolve_model: Callable[[Optional[str]], str],
        cache_dir: Callable[[], Path],
        placement: Callable[[], Placement],
        exclusive: Callable[[Callable[[], T]], T],
    ) -> None:
        self._resolve_model = resolve_model  # requested name (None: the configured one) -> model spec
        self._cache_dir = cache_dir
        self._placement = placement
        self._exclusive = exclusive
        self._spec: str | None = None
        self._engine: Engine | None = None

    def run(self, work: Callable[[Engine], T], model: str | None = None, progress: ProgressFn | None = None) -> T:
        """`work(engine)` with the engine on the host's device; raises ModelError if the weights can't be had."""
        return self._exclusive(lambda: self._run(work, self.resolve(model), progress))

    def resolve(self, model: str | None) -> str:
        """The model spec a requested name means now (None: the configured one)."""
        return self._resolve_model(model)

    def unload(self) -> None:
        self._exclusive(self._forget)

    def _run(self, work: Callable[[Engine], T], spec: str, progress: ProgressFn | None) -> T:
        placement = self._placement()
        if self._engine and spec != self._spec:
            self._forget()  # one model in memory at a time: the webui's own models need the room
        loaded = self._engine.loaded if self._engine else load_model(spec, "cpu", placement.dtype, self._cache_dir())
        placement.acquire(loaded)
        try:
            if self._engine is None:
                # The model is already on its device, so the first-use vocabulary encoding runs there.
                self._engine = Engine(spec, loaded.device, loaded.dtype, self._cache_dir(), progress=progress)
                self._spec = spec
            self._engine.keep_in_vram = placement.keep_in_vram
            return work(self._engine)
        finally:
            placement.release(loaded)

    def _forget(self) -> None:
        self._engine = self._spec = None
        unload_models()


def extract_options(
    max_tags: float, auto_tau: bool, tau: float, weights: bool, quality_negatives: float, negatives: int,
    caption: Optional[str] = None, caption_options: CaptionOptions = CaptionOptions(),
) -> ExtractOptions:
    """The tab's control values (sliders give floats) as ExtractOptions; caption: a captioner, or None for tags only."""
    return ExtractOptions(
        max_tags=int(max_tags),
        tau=None if auto_tau else float(tau),
        weights=bool(weights),
        quality_negatives=int(quality_negatives),
        negatives=int(negatives),
        caption=caption or None,
        caption_beams=caption_options.beams,
        caption_min_length=caption_options.min_length,
        caption_max_length=caption_options.max_length,
    )


def cycle_tag(tags: Sequence[TagScore], tag: str, weights: bool) -> tuple[list[TagScore], str, str]:
    """A click on a tag: positive -> negative -> off -> positive; returns (tags, prompt, negative prompt)."""
    role = next((item.role for item in tags if item.tag == tag), None)
    changed = with_role(tags, tag, NEXT_ROLE[role]) if role else list(tags)
    return (changed, *prompts(changed, weights))


def tag_bars_html(tags: Sequence[TagScore]) -> str:
    """One clickable bar per tag; its length is the tag's relevance against the most relevant one."""
    if not tags:
        return ""
    top = max(max(tag.relevance for tag in tags), 1e-6)
    rows = "".join(_tag_bar(tag, 4 + 96 * min(max(tag.relevance / top, 0.0), 1.0)) for tag in tags)
    hint = "Click a tag to move it: positive &rarr; negative &rarr; off."
    return f'<div class="easy-diffuser-tags"><p class="easy-diffuser-hint">{hint}</p>{rows}</div>'


def _tag_bar(tag: TagScore, width: float) -> str:
    name = html.escape(tag.tag, quote=True)
    title = html.escape(f"{tag.category}: score {tag.score:.3f}, relevance {tag.relevance:.2f}", quote=True)
    return (
        f'<button type="button" class="easy-diffuser-tag easy-diffuser-{tag.role}" data-tag="{name}" title="{title}">'
        f'<span class="easy-diffuser-bar" style="width:{width:.0f}%"></span>'
        f'<span class="easy-diffuser-role">{tag.role}</span>'
        f'<span class="easy-diffuser-name">{name}</span>'
        f'<span class="easy-diffuser-score">{tag.score:.3f}</span></button>'
    )


def status_html(result: Extraction) -> str:
    """Which model and which tau made this result, and where that tau came from."""
    positive = sum(tag.role == "positive" for tag in result.tags)
    negative = sum(tag.role == "negative" for tag in result.tags)
    text = f"{result.model} &middot; tau {result.tau:.2f} ({html.escape(result.tau_source)}) &middot; {positive} positive, {negative} negative tags"
    return f'<p class="easy-diffuser-status">{text}</p>'


def error_html(message: str) -> str:
    return f'<p class="easy-diffuser-status easy-diffuser-error">{html.escape(message)}</p>'


def batch_html(summary: BatchSummary) -> str:
    failed = "".join(f"<li>{html.escape(reason)}</li>" for _, reason in summary.failed)  # reasons name their file
    return f'<p class="easy-diffuser-status">{html.escape(str(summary))}</p>' + (f"<ul>{failed}</ul>" if failed else "")


# -- the Calibrate section -------------------------------------------------------------------


def numbers_text(values: Sequence[float]) -> str:
    """A sweep as the text field shows it: "-1, -0.75, 0"."""
    return ", ".join(f"{value:g}" for value in values)


def parse_taus(text: str) -> tuple[float, ...]:
    """The taus field: numbers separated by commas or spaces; ValueError with a message for the user."""
    return tuple(dict.fromkeys(_numbers(text, "taus", float, "-0.5, 0, 0.5, 1")))  # a repeat would only cost time


def parse_negatives(text: str) -> tuple[int, ...]:
    """The negatives field: whole numbers of negative tags, 0 or more."""
    counts = _numbers(text, "negatives", int, "2, 4, 8")
    if any(count < 0 for count in counts):
        raise ValueError("negatives: the numbers of negative tags can't be below 0.")
    return tuple(dict.fromkeys(counts))


def _numbers(text: str, name: str, kind: type, example: str) -> list:
    tokens = [token for token in re.split(r"[,;\s]+", text.strip()) if token]
    if not tokens:
        raise ValueError(f"{name}: enter at least one number, e.g. {example}.")
    values = []
    for token in tokens:
        try:
            value = kind(token)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ValueError(f"{name}: {token!r} is not {what}; separate numbers with commas, e.g. {example}.") from None
        if not math.isfinite(value):  # float() reads "nan" and "inf", which no sweep can use
            raise ValueError(f"{name}: {token!r} is not a finite number.")
        values.append(value)
    return values


def tau_in_force_html(model: str, tau: float, source: str) -> str:
    """What Automatic tau means now for this model (after a calibration: the learned value)."""
    text = f"{html.escape(model)} &middot; tau in force with Automatic tau: {tau:.2f} ({html.escape(source)})"
    return f'<p class="easy-diffuser-status">{text}</p>'


def calibration_html(result: Calibration) -> str:
    """A finished calibration: the choice, what it beat, where it was saved, and the whole table."""
    assert result.best is not None
    best = result.best
    lines = [
        f"Best on {len(result.images)} images: <b>{html.escape(_describe(best))}</b> (loss {best.loss:.4f}).",
        *(f"{html.escape(_describe(row))}: loss {row.loss:.4f}." for row in _best_baselines(result.baselines)),
    ]
    if result.path:
        lines.append(f"Saved to {html.escape(str(result.path))}: Automatic tau uses it from now on.")
    summary = "".join(f"<p>{line}</p>" for line in lines)
    return f'<div class="easy-diffuser-calibration">{summary}{_table_html(result.rows + result.baselines, best)}</div>'


def _best_baselines(baselines: Sequence[Row]) -> list[Row]:
    """One line per kind of baseline: its best number of negatives is the fair comparison."""
    by_label: dict[str, Row] = {}
    for row in baselines:
        if row.setting.label not in by_label or row.loss < by_label[row.setting.label].loss:
            by_label[row.setting.label] = row
    return list(by_label.values())


def _describe(row: Row) -> str:
    """Setting.describe(), with the count a baseline was measured at (one whole-vocabulary row per count)."""
    setting = row.setting
    return f"{setting.label}, {setting.negatives} negatives" if setting.label and setting.negatives else setting.describe()


def _table_html(rows: Sequence[Row], best: Row) -> str:
    head = "<tr><th>setting</th><th>loss (BCE)</th><th>image cosine</th></tr>"
    body = "".join(_table_row(row, row is best) for row in rows)
    return f'<table class="easy-diffuser-table">{head}{body}</table>'


def _table_row(row: Row, best: bool) -> str:
    marked = ' class="easy-diffuser-best"' if best else ""
    cells = f"<td>{html.escape(_describe(row))}</td><td>{row.loss:.4f}</td><td>{row.cosine:.4f}</td>"
    return f"<tr{marked}>{cells}</tr>"


def calibration_stopped_html(done: int, total: int) -> str:
    counted = f" after {done} of {total} generations" if total else ""
    return (
        f'<p class="easy-diffuser-status">Stopped{counted}. The finished generations are kept: '
        "press Calibrate to go on from there.</p>"
    )
