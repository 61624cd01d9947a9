"""`easy-diffuser dataset FOLDER ...`: a dataset's tag report, bulk edits of its captions, and undo.

A refusal (a bad flag, a folder that isn't there, a report inside the dataset) is one line and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from ..exit_codes import EXIT_IMAGE_FAILED, EXIT_SETUP_FAILED
from ..options import DATASET_OPTION, CommandLineParser
from .captions import DatasetError, counted
from .edits import Edit, edit_folder, parse_renames, parse_tags
from .journal import JournalError, undo
from .report import NO_CHART, build_report, check_out_dir, write_report

EXAMPLES = """examples:
  easy-diffuser dataset train/ --report report/ --min-share 0.01
  easy-diffuser dataset train/ --rename-tag "long hair=long_hair" --remove-tag watermark --dry-run
  easy-diffuser dataset train/ --add-tag mychar --where 1girl
  easy-diffuser dataset train/ --undo      # back to the captions before the last edit"""


EDIT_LISTS = ("rename_tag", "remove_tag", "add_tag", "where")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="easy-diffuser dataset",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
        description="The captions beside a folder's images, as LoRA trainers read them: a report of their tags, "
        "edits of all of them at once, and undo (docs/datasets.md).",
    )
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="the images and their caption files")
    extension = DATASET_OPTION["caption_extension"]
    parser.add_argument(
        extension.flag,
        type=extension.argument_type(),
        default=extension.default,
        metavar="EXT",
        help=f"{extension.help} (default: {extension.default})",
    )
    parser.add_argument("--recursive", action="store_true", help="also the images in sub-folders")
    report = parser.add_argument_group("the report")
    report.add_argument(
        "--report", type=Path, metavar="OUT_DIR", help="write tags.csv, tags.json and tags.png there (not in FOLDER)"
    )
    share = DATASET_OPTION["min_share"]
    report.add_argument(
        share.flag,
        type=share.argument_type(),
        default=share.default,
        metavar="F",
        help=f"{share.help}; {share.minimum:g} to {share.maximum:g}",
    )
    edits = parser.add_argument_group("bulk edits (journalled: --undo takes the last one back)")
    edits.add_argument(
        "--rename-tag",
        type=_argument(parse_renames),
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="rename a tag (several: repeat the flag, or OLD=NEW, OLD2=NEW2); \\= is an = inside a tag",
    )
    for flag, what in (
        ("--remove-tag", "remove the tag"),
        ("--add-tag", "add the tag at the end of every caption (creating a caption where an image has none)"),
        ("--where", "edit only the captions that have this tag (several: all of them)"),
    ):
        name = flag.removeprefix("--").removesuffix("-tag")
        parse = _argument(lambda text, name=name: parse_tags(name, text))
        edits.add_argument(flag, type=parse, action="append", default=[], metavar="TAG", help=f"{what}; TAG, TAG2 ...")
    edits.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    parser.add_argument("--undo", action="store_true", help="take back the last edit of FOLDER, byte for byte")
    return parser


def _argument(parse: Callable[[str], tuple]) -> Callable[[str], tuple]:
    def checked(text: str) -> tuple:
        try:
            parsed = parse(text)
        except DatasetError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        if not parsed:  # `--where ""` from an empty variable would otherwise edit every caption
            raise argparse.ArgumentTypeError(f"no tag in {text!r}")
        return parsed

    return checked


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flat = {name: tuple(item for group in getattr(args, name) for item in group) for name in EDIT_LISTS}
    editing = any(flat[name] for name in ("rename_tag", "remove_tag", "add_tag"))
    reporting = args.report is not None or args.min_share > 0
    if sum((editing, reporting, args.undo)) != 1:
        parser.error(
            "give one thing to do: --report OUT_DIR, an edit (--rename-tag, --remove-tag, --add-tag) or --undo"
        )
    if (flat["where"] or args.dry_run) and not editing:
        parser.error("--where and --dry-run go with an edit (--rename-tag, --remove-tag, --add-tag)")
    try:
        if args.undo:
            return _undo(args.folder)
        if editing:
            edit = Edit(flat["rename_tag"], flat["remove_tag"], flat["add_tag"], flat["where"])
            return _edit(args, edit)
        return _report(args)
    except (DatasetError, JournalError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    except OSError as error:  # a folder that can't be listed or written: one line naming it
        print(f"error: {error.filename or args.folder}: {error.strerror or error}", file=sys.stderr)
        return EXIT_SETUP_FAILED


def _report(args: argparse.Namespace) -> int:
    if args.report is not None:
        check_out_dir(args.folder, args.report)  # refused before reading 100,000 files
    with _bar(f"Reading {args.folder}") as progress:
        report = build_report(args.folder, args.caption_extension, args.recursive, progress)
    _print_skipped(report.skipped)
    print(report.summary())
    if args.report is not None:
        written = write_report(report, args.report, args.min_share)
        print("wrote " + ", ".join(str(path) for path in written.values()))
        if "chart" not in written:
            print(f"chart {NO_CHART}")
    if args.min_share:
        rare = report.rare(args.min_share)
        print(f"{counted(len(rare), 'tag')} on fewer than {args.min_share:.1%} of the images" + (":" if rare else ""))
        for tag in rare:
            print(f"  {tag} ({len(report.tags[tag])})")
    return 0


def _edit(args: argparse.Namespace, edit: Edit) -> int:
    def show(caption: str, before: str | None, after: str) -> None:
        was = "(no caption)" if before is None else json.dumps(before, ensure_ascii=False)
        tqdm.write(f"{caption}: {was} -> {json.dumps(after, ensure_ascii=False)}")

    with _bar(f"Editing {args.folder}") as progress:
        summary = edit_folder(
            args.folder,
            edit,
            args.caption_extension,
            args.recursive,
            args.dry_run,
            progress,
            show if args.dry_run else None,
        )
    _print_skipped(summary.skipped)
    for caption, reason in summary.failed:
        print(f"error: {caption}: {reason}", file=sys.stderr)
    print(f"{args.folder}: {summary}")
    if summary.journal:
        print(f"journal: {summary.journal} (easy-diffuser dataset {args.folder} --undo takes it back)")
    return EXIT_IMAGE_FAILED if summary.failed else 0


def _undo(folder: Path) -> int:
    with _bar(f"Undoing in {folder}") as progress:
        summary = undo(folder, progress)
    print(f"{folder}: {summary}")
    if summary.refused:
        print(f"error: {summary.refusal()}", file=sys.stderr)
        return EXIT_IMAGE_FAILED
    return 0


def _print_skipped(skipped: list[tuple[str, str]]) -> None:
    for caption, reason in skipped:
        print(f"skipped {caption}: {reason}", file=sys.stderr)


class _bar:
    """A tqdm bar as a progress(done, total) callback."""

    def __init__(self, desc: str) -> None:
        self.bar = tqdm(desc=desc, unit="caption", disable=None)

    def __enter__(self) -> Callable[[int, int], None]:
        def progress(done: int, total: int) -> None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)

        return progress

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
