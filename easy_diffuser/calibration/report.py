"""The calibration report, written next to the calibration JSON:

* `{model}.md`: the loss table;
* `{model}-loss.png`: loss against tau, one line per number of negatives, with the baselines;
* `{model}-grid.png`: source images beside what the best and a poor tau generated from them.

The plot needs matplotlib, the optional `report` extra (without it the plot is skipped, and the
table and the command line say how to get it); the grid is drawn with PIL only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from ..files import write_atomically, write_text_atomically
from .generators import GenerationStopped, Generator
from .sweep import NO_NEGATIVES, WHOLE_VOCABULARY_LABEL, Calibration, Row, image_key, image_seed

GRID_ROWS = 6
CELL = 128
HEADER = 34
LABEL_COLOUR = (20, 20, 20)
NO_PLOT = "not drawn: it needs matplotlib, pip install 'easy-diffuser[report]'"


def write_report(
    result: Calibration, images: Sequence[Image.Image], generator: Generator, target: Path
) -> dict[str, Path]:
    """Write the report files for a finished calibration; returns them by kind."""
    stem = target.with_suffix("")
    paths = {"table": stem.with_suffix(".md")}
    plot = Path(f"{stem}-loss.png")
    plotted = plot_losses(result, plot)
    if plotted:
        paths["plot"] = plot
    grid = Path(f"{stem}-grid.png")
    try:
        picture = draw_grid(images, generator, result, poor_row(result))
        write_atomically(grid, lambda temp: picture.save(temp, format="PNG"))
        paths["grid"] = grid
    except GenerationStopped:
        pass  # Stop while drawing the grid: the calibration itself is complete, keep it
    summary = "\n".join(f"- {line}" for line in summary_lines(result))
    text = (
        f"# Calibration of {result.model}\n\n{len(images)} images, generator: {result.generator}\n\n"
        f"{summary}\n\n{table_text(result.rows + result.baselines, result.best)}\n"
    )
    if not plotted:
        text += f"\n(loss plot {NO_PLOT})\n"
    write_text_atomically(paths["table"], text)
    return paths


def poor_row(result):
    """The worst tau at the best number of negatives: what a badly chosen tau costs."""
    same = [row for row in result.rows if row.setting.negatives == result.best.setting.negatives]
    return max(same, key=lambda row: row.loss)


def plot_losses(result, path: Path) -> bool:
    """Loss against tau; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: only files
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    by_count: dict[int, list] = {}
    for row in result.rows:
        by_count.setdefault(row.setting.negatives, []).append(row)
    # The whole-vocabulary rule as one more point per line, left of the sweep, in the line's colour.
    whole_x = min(row.setting.tau for row in result.rows) - 0.5
    whole = {row.setting.negatives: row.loss for row in result.baselines if row.setting.label == WHOLE_VOCABULARY_LABEL}
    for count, rows in sorted(by_count.items()):
        rows.sort(key=lambda row: row.setting.tau)
        (line,) = axes.plot(
            [r.setting.tau for r in rows], [r.loss for r in rows], marker="o", markersize=3, label=f"{count} negatives"
        )
        if count in whole:
            axes.plot([whole_x], [whole[count]], marker="s", markersize=5, color=line.get_color(), linestyle="none")
    ticks = [tick for tick in axes.get_xticks() if tick > whole_x + 0.25]
    axes.set_xticks([whole_x, *ticks], ["all tags", *(f"{tick:g}" for tick in ticks)])
    _plot_baselines(axes, result)
    best = result.best
    axes.scatter(
        [best.setting.tau],
        [best.loss],
        s=120,
        facecolors="none",
        edgecolors="black",
        zorder=5,
        label=f"chosen: tau {best.setting.tau:g}, {best.setting.negatives} negatives",
    )
    axes.set_xlabel("tau (relevance threshold of the negative prompt's subset); squares: whole vocabulary")
    axes.set_ylabel("mean BCE loss, source vs generated")
    dropped = (
        " (settings the search dropped: on fewer images)"
        if any(r.images < len(result.images) for r in result.rows)
        else ""
    )
    axes.set_title(f"{result.model}: round-trip loss over {len(result.images)} images{dropped}", fontsize=9)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    write_atomically(path, lambda temp: figure.savefig(temp, format="png"))
    plt.close(figure)
    return True


def _plot_baselines(axes, result) -> None:
    for row in result.baselines:
        if row.setting.label == NO_NEGATIVES:
            axes.axhline(row.loss, color="gray", linestyle="--", label=NO_NEGATIVES)
    axes.plot([], [], marker="s", color="gray", linestyle="none", label=f"{WHOLE_VOCABULARY_LABEL} (square)")


def draw_grid(images: Sequence[Image.Image], generator: Generator, result, poor) -> Image.Image:
    """Rows of source | generated with the best setting | generated with a poor tau."""
    count = min(GRID_ROWS, len(images), poor.images)  # a setting the search dropped early was measured on few
    columns = [
        ("source", None),
        (f"best: {result.best.setting.describe()}", result.best),
        (f"poor: {poor.setting.describe()}", poor),
    ]
    grid = Image.new("RGB", (CELL * len(columns), HEADER + CELL * count), (225, 225, 225))  # gaps show as lines
    pen = ImageDraw.Draw(grid)
    for column, (title, row) in enumerate(columns):
        pen.text((column * CELL + 4, 4), _wrap(title, 22), fill=LABEL_COLOUR)
        for index in range(count):
            if row is None:
                picture = images[index]
            else:
                prompt, negative = row.prompts[index]
                # The same seed as in the sweep, so this is the very image that was scored.
                picture = generator.generate(prompt, negative, image_seed(image_key(images[index]), result.seed))
            grid.paste(
                picture.convert("RGB").resize((CELL - 4, CELL - 4)), (column * CELL + 2, HEADER + index * CELL + 2)
            )
            if row is not None:
                pen.text((column * CELL + 4, HEADER + index * CELL + 4), f"{row.losses[index]:.3f}", fill=(255, 0, 255))
    return grid


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def table_text(rows: Sequence[Row], best: Row | None = None) -> str:
    """Every row, the chosen one marked, with the images it was measured on (the search drops settings early)."""
    lines = ["| setting | loss (BCE) | image cosine | images |", "|---|---|---|---|"]
    for row in rows:
        name = f"**{row.setting.describe()}** (chosen)" if row is best else row.setting.describe()
        lines.append(f"| {name} | {row.loss:.4f} | {row.cosine:.4f} | {row.images} |")
    return "\n".join(lines)


def summary_lines(result: Calibration) -> list[str]:
    """The chosen setting, then each kind of baseline against it, each line saying on which images it compares."""
    best = result.best
    assert best is not None
    cost = f"{result.generations} generations" + (
        f", the full sweep needs {result.full_sweep}" if result.full_sweep > result.generations else ""
    )
    total = len(result.images) or best.images
    lines = [f"chosen: {best.setting.describe()}, loss {best.loss:.4f} on {_images(best.images, total)} ({cost})"]
    beaten_by = []
    for row in best_baselines(result.baselines):
        chosen_there = sum(best.losses[: row.images]) / row.images  # the same images: a paired comparison
        margin = row.loss - chosen_there
        if abs(margin) < 5e-5:
            verdict = "the same loss"
        elif margin > 0:
            verdict = f"the chosen setting is better by {margin:.4f}"
        else:
            verdict = f"BEATS the chosen setting by {-margin:.4f}"
            beaten_by.append(row.setting.describe())
        where = _images(row.images, total) if row.images == best.images else f"the {row.images} images both were run on"
        lines.append(
            f"baseline {row.setting.describe()} vs chosen, on {where}: "
            f"loss {row.loss:.4f} vs {chosen_there:.4f}, {verdict}"
        )
    if beaten_by:
        lines.append(
            f"note: {' and '.join(beaten_by)} did better than every tau tried. Baselines are shown, never chosen: "
            "the sweep tries taus only (see docs/calibration.md, 'What it does not show'); try lower --taus if you "
            "want the tau closest to it."
        )
    return lines


def _images(count: int, total: int) -> str:
    if count < total:
        return f"{count} of the {total} images"
    return f"all {total} images" if total > 1 else "the 1 image"


def best_baselines(baselines: Sequence[Row]) -> list[Row]:
    """One row per kind of baseline, its best number of negatives (measured on the most images): the fair comparison."""
    by_label: dict[str, Row] = {}
    for row in baselines:
        kept = by_label.get(row.setting.label)
        if kept is None or (row.images, -row.loss) > (kept.images, -kept.loss):
            by_label[row.setting.label] = row
    return list(by_label.values())
