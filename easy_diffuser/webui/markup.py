"""The tab's HTML: tag bars, status and error lines, batch, calibration, Check and Refine reports."""

from __future__ import annotations

import html
from typing import Sequence

from ..batch import BatchSummary
from ..calibration import Calibration, Row
from ..calibration.report import summary_lines
from ..calibration.store import InForce, change_text
from ..engine import Extraction
from ..refine import SCORE_HELP, Refinement, Round
from ..selection import TagScore


def tag_bars_html(tags: Sequence[TagScore]) -> str:
    """One clickable bar per tag; its length is the tag's relevance against the most relevant one."""
    if not tags:
        return ""
    top = max(max(tag.relevance for tag in tags), 1e-6)
    rows = "".join(_tag_bar(tag, 4 + 96 * min(max(tag.relevance / top, 0.0), 1.0)) for tag in tags)
    hint = (
        "Click a tag to move it: positive &rarr; negative &rarr; off. A click or a moved control "
        "rewrites both prompts, hand edits included."
    )
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
    tau = f"tau {result.tau:.2f} ({html.escape(result.tau_source)})"
    text = f"{html.escape(result.model)} &middot; {tau} &middot; {positive} positive, {negative} negative tags"
    if result.style_note:
        text += f" &middot; {html.escape(result.style_note)}"
    if result.preset:
        text += f" &middot; preset: {html.escape(result.preset.status)}"
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
        f"Best on {len(result.images)} images: <b>{html.escape(best.setting.describe())}</b> (loss {best.loss:.4f}).",
        *(html.escape(line) for line in summary_lines(result)[1:]),
    ]
    lines += [f"Skipped {html.escape(line)}" for line in result.skipped]
    if result.path:
        lines.append(
            f"Saved as a candidate in {html.escape(str(result.path))}: press <b>Apply</b> to make Automatic tau use it."
        )
    summary = "".join(f"<p>{line}</p>" for line in lines)
    return f'<div class="easy-diffuser-calibration">{summary}{_table_html(result.rows + result.baselines, best)}</div>'


def _table_html(rows: Sequence[Row], best: Row) -> str:
    head = "<tr><th>setting</th><th>loss (BCE)</th><th>image cosine</th><th>images</th></tr>"
    body = "".join(_table_row(row, row is best) for row in rows)
    return f'<table class="easy-diffuser-table">{head}{body}</table>'


def _table_row(row: Row, best: bool) -> str:
    marked = ' class="easy-diffuser-best"' if best else ""
    numbers = f"<td>{row.loss:.4f}</td><td>{row.cosine:.4f}</td><td>{row.images}</td>"
    cells = f"<td>{html.escape(row.setting.describe())}</td>{numbers}"
    return f"<tr{marked}>{cells}</tr>"


def calibration_stopped_html(done: int, total: int) -> str:
    counted = f" after {done} of {total} generations" if total else ""
    return (
        f'<p class="easy-diffuser-status">Stopped{counted}. The finished generations are kept: '
        "press Calibrate to go on from there.</p>"
    )


def calibration_change_html(verb: str, before: InForce, after: InForce) -> str:
    """After Apply or Undo: what Automatic tau means now, and what it meant before."""
    text = f"Calibration {verb}: {change_text(before, after)}. In force now: {after.describe()}."
    return f'<p class="easy-diffuser-status">{html.escape(text)}</p>'


def calibration_progress(done: int, total: int, seconds_each: float | None) -> str:
    """The progress line of a calibration: generations, and the time left at the pace measured so far."""
    text = f"Calibrating: {done} of about {total} generations"
    if seconds_each:
        text += f", {seconds_each:.1f} s each, about {_duration(seconds_each * max(total - done, 0))} left"
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def round_trip_html(result: Refinement, filled: bool = False) -> str:
    """Check and Refine: the score explained, each finished round's score and tag diff, and how it ended.
    `filled`: the best pair was put into the prompt boxes."""
    best = result.best
    lines = [f'<p class="easy-diffuser-hint">{html.escape(SCORE_HELP)}.</p>']
    if best is not None and len(result.rounds) > 1:
        start = result.rounds[0].loss
        where = " It is in the prompt boxes." if filled else ""
        lines.append(f"<p>Best: <b>round {best.index}</b>, loss {best.loss:.4f} (start {start:.4f}).{where}</p>")
    if result.stopped:
        lines.append("<p>Stopped: the finished rounds are kept.</p>")
    if result.error:
        lines.append(f"<p>Generation failed in {html.escape(result.error)}; the finished rounds are kept.</p>")
    head = "<tr><th>round</th><th>loss</th><th>image cosine</th><th>lost</th><th>added</th><th>prompt</th></tr>"
    body = "".join(_round_row(r, r is best) for r in result.rounds)
    seeds = f"<p>Each score: {len(result.seeds)} generation(s), seeds {', '.join(map(str, result.seeds))}.</p>"
    table = f'<table class="easy-diffuser-table">{head}{body}</table>' if result.rounds else ""
    return f'<div class="easy-diffuser-round-trip">{"".join(lines)}{table}{seeds}</div>'


def _round_row(scored: Round, best: bool) -> str:
    marked = ' class="easy-diffuser-best"' if best else ""
    cells = [
        "start" if scored.index == 0 else str(scored.index),
        f"{scored.loss:.4f}",
        f"{scored.cosine:.4f}",
        ", ".join(scored.lost) or "-",
        ", ".join(scored.added) or "-",
        f"{scored.prompt} | negative: {scored.negative_prompt or '-'}",
    ]
    return f"<tr{marked}>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"
