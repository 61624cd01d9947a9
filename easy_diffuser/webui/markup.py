"""The tab's HTML: tag bars, status and error lines, batch and calibration reports."""
from __future__ import annotations

import html
from typing import Sequence

from ..batch import BatchSummary
from ..calibration import Calibration, Row
from ..engine import Extraction
from ..selection import TagScore

def tag_bars_html(tags: Sequence[TagScore]) -> str:
    """One clickable bar per tag; its length is the tag's relevance against the most relevant one."""
    if not tags:
        return ""
    top = max(max(tag.relevance for tag in tags), 1e-6)
    rows = "".join(_tag_bar(tag, 4 + 96 * min(max(tag.relevance / top, 0.0), 1.0)) for tag in tags)
    hint = ("Click a tag to move it: positive &rarr; negative &rarr; off. A click or a moved control "
            "rewrites both prompts, hand edits included.")
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
