"""The batch section's Dataset panel: the tag report of a folder's captions, bulk edits, dry run and undo.

The same work as `easy-diffuser dataset` (easy_diffuser/dataset/), on the batch section's folder; no model is
loaded. It is built only where the batch section is (server folders allowed: not --hide-ui-dir-config).
"""

from __future__ import annotations

import html
import tempfile
from functools import partial
from typing import Any, Callable

import gradio as gr
from PIL import Image

from ..dataset import DatasetError, Edit, EditSummary, JournalError, Report, build_report, edit_folder, undo
from ..dataset.captions import counted, split_tags
from ..dataset.edits import parse_renames, parse_tags
from ..dataset.report import NO_CHART, write_report
from ..options import DATASET_OPTION, OptionError
from .markup import error_html

SHOWN_TAGS = 30  # rows of the report's table, as many as the chart's bars (the files hold them all)
SHOWN_NAMES = 20  # images named in a list before "and N more"
SHOWN_CHANGES = 12  # a dry run's changes shown
FAILURES = (DatasetError, JournalError, OptionError, OSError)  # messages written for the user, naming the file


def build(folder: gr.Textbox, recursive: gr.Checkbox, extension: gr.Textbox) -> None:
    """The panel, acting on the batch section's folder, its sub-folders checkbox and its caption extension: the
    captions the batch writes are the ones the panel reads."""
    share_option = DATASET_OPTION["min_share"]
    with gr.Accordion("Dataset: tag report and bulk edits", open=False, elem_id="easy_diffuser_dataset"):
        with gr.Row():
            min_share = gr.Slider(
                share_option.minimum,
                share_option.maximum,
                value=share_option.default,
                step=share_option.step,
                label=share_option.label,
                elem_id="easy_diffuser_dataset_min_share",
            )
            out_dir = gr.Textbox(
                label="Report folder",
                placeholder="outside the dataset; empty: a temporary folder",
                elem_id="easy_diffuser_dataset_out",
            )
        run_report = gr.Button("Report", variant="primary", elem_id="easy_diffuser_dataset_report_run")
        with gr.Row(equal_height=False):
            chart = gr.Image(
                label="Top tags", type="pil", interactive=False, visible=False, elem_id="easy_diffuser_dataset_chart"
            )
            report = gr.HTML(elem_id="easy_diffuser_dataset_report")
        with gr.Row():
            renames = gr.Textbox(label="Rename tags", placeholder="old=new, old2=new2", elem_id="easy_diffuser_rename")
            removes = gr.Textbox(label="Remove tags", placeholder="tag, tag2", elem_id="easy_diffuser_remove")
            adds = gr.Textbox(label="Add tags", placeholder="tag, tag2", elem_id="easy_diffuser_add")
            where = gr.Textbox(
                label="Only captions with", placeholder="tag (empty: all)", elem_id="easy_diffuser_where"
            )
        with gr.Row():
            dry_run = gr.Button("Dry run", elem_id="easy_diffuser_dataset_dry_run")
            apply = gr.Button("Apply edit", variant="primary", elem_id="easy_diffuser_dataset_apply")
            undo_last = gr.Button("Undo last edit", elem_id="easy_diffuser_dataset_undo")
        edited = gr.HTML(elem_id="easy_diffuser_dataset_edit_report")
    run_report.click(make_report, inputs=[folder, recursive, extension, min_share, out_dir], outputs=[chart, report])
    edit_inputs = [folder, recursive, extension, renames, removes, adds, where]
    dry_run.click(partial(edit, True), inputs=edit_inputs, outputs=[edited])
    apply.click(partial(edit, False), inputs=edit_inputs, outputs=[edited])
    undo_last.click(undo_edit, inputs=[folder], outputs=[edited])


def make_report(
    folder: str, recursive: bool, extension: str, min_share: float, out_dir: str, progress: Any = gr.Progress()
) -> tuple:
    """-> chart, report HTML."""
    hidden = gr.update(value=None, visible=False)
    try:
        extension = DATASET_OPTION["caption_extension"].check(extension)
        min_share = DATASET_OPTION["min_share"].check(float(min_share))
        target = out_dir.strip() or tempfile.mkdtemp(prefix="easy-diffuser-report-")
        report = build_report(_folder(folder), extension, recursive, _reporter(progress, "Reading captions"))
        written = write_report(report, target, min_share)
    except FAILURES as error:
        return hidden, error_html(_message(error))
    chart = hidden
    if "chart" in written:
        with Image.open(written["chart"]) as picture:  # a PIL image: gradio 4 serves no file outside its folders
            chart = gr.update(value=picture.copy(), visible=True)
    return chart, report_html(report, min_share, str(written["json"].parent), "chart" in written)


def edit(
    dry_run: bool,
    folder: str,
    recursive: bool,
    extension: str,
    renames: str,
    removes: str,
    adds: str,
    where: str,
    progress: Any = gr.Progress(),
) -> str:
    """Dry run or apply the edit of the boxes -> what changed (or would), as HTML."""
    changes: list[tuple[str, str | None, str]] = []
    try:
        extension = DATASET_OPTION["caption_extension"].check(extension)
        wanted = Edit(
            parse_renames(renames), parse_tags("remove", removes), parse_tags("add", adds), parse_tags("where", where)
        )
        summary = edit_folder(
            _folder(folder),
            wanted,
            extension,
            recursive,
            dry_run,
            _reporter(progress, "Editing captions"),
            lambda *change: len(changes) < SHOWN_CHANGES and changes.append(change),
        )
    except FAILURES as error:
        return error_html(_message(error))
    return edit_html(summary, changes)


def undo_edit(folder: str, progress: Any = gr.Progress()) -> str:
    try:
        summary = undo(_folder(folder), _reporter(progress, "Undoing the last edit"))
    except FAILURES as error:
        return error_html(_message(error))
    text = f'<p class="easy-diffuser-status">{html.escape(str(summary))}</p>'
    return _edited(text + (error_html(summary.refusal()) if summary.refused else ""))


def _folder(folder: str) -> str:
    if not folder.strip():
        raise DatasetError("Enter the dataset's folder (the Folder box above).")
    return folder.strip()


def _message(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror or error}"
    return str(error)


def _reporter(progress: Any, desc: str) -> Callable[[int, int], None]:
    return lambda done, total: progress((done, total), desc=desc, unit="captions")


def report_html(report: Report, min_share: float, out_dir: str, charted: bool) -> str:
    lines = [html.escape(report.summary()), f"Files: {html.escape(out_dir)} (tags.csv, tags.json, tags.png)"]
    if not charted:
        lines.append(html.escape(f"Chart {NO_CHART}"))
    for label, indices in (("Without a caption", report.no_caption), ("Empty caption", report.empty_caption)):
        if indices:
            lines.append(f"{label}: {_names([report.images[index] for index in indices])}")
    lines += [html.escape(f"Skipped {file}: {reason}") for file, reason in report.skipped[:SHOWN_NAMES]]
    if min_share:
        rare = report.rare(min_share)
        lines.append(f"{counted(len(rare), 'tag')} on fewer than {min_share:.1%} of the images: {_names(rare) or '-'}")
    head = "<tr><th>tag</th><th>images</th><th>share</th></tr>"
    rows = "".join(
        f"<tr><td>{html.escape(tag)}</td><td>{len(images)}</td><td>{report.share(len(images)):.1%}</td></tr>"
        for tag, images in report.ranked()[:SHOWN_TAGS]
    )
    paragraphs = "".join(f'<p class="easy-diffuser-status">{line}</p>' for line in lines)
    return (
        f'<div class="easy-diffuser-dataset">{paragraphs}<table class="easy-diffuser-table">{head}{rows}</table></div>'
    )


def edit_html(summary: EditSummary, changes: list[tuple[str, str | None, str]]) -> str:
    lines = [html.escape(str(summary))]
    lines += [html.escape(f"{file}: {reason}") for file, reason in summary.failed]
    if summary.journal:
        lines.append(f"Journal: {html.escape(str(summary.journal))} (Undo last edit takes it back)")
    paragraphs = "".join(f'<p class="easy-diffuser-status">{line}</p>' for line in lines)
    if not summary.dry_run or not changes:
        return _edited(paragraphs)
    head = "<tr><th>caption</th><th>tags removed</th><th>tags added</th></tr>"
    rows = "".join(_change_row(*change) for change in changes)
    more = summary.changed + summary.created - len(changes)
    more_line = f'<p class="easy-diffuser-hint">and {more} more</p>' if more > 0 else ""
    return _edited(f'{paragraphs}<table class="easy-diffuser-table">{head}{rows}</table>{more_line}')


def _change_row(caption: str, before: str | None, after: str) -> str:
    """A dry run's change as the tags it takes away and adds (a rename is both), not two whole captions."""
    old, new = split_tags(before or ""), split_tags(after)
    removed = [tag for tag in dict.fromkeys(old) if tag not in new]
    added = [tag for tag in dict.fromkeys(new) if tag not in old]
    if before is None:
        caption += " (new)"
    cells = (caption, ", ".join(removed) or "-", ", ".join(added) or "-")
    return "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"


def _edited(content: str) -> str:
    return f'<div class="easy-diffuser-dataset-edit">{content}</div>'


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
    return html.escape(shown + more)
