"""Command line: `easy-diffuser IMAGE_OR_FOLDER... [--model NAME|PATH] [--json]`
(and `easy-diffuser calibrate FOLDER ...`, see calibration/cli.py).

Images print their prompts (or one JSON object each with --json); folders get a caption file
(`.txt`, or --caption-extension) beside every image. A bad image costs one line on stderr, never the others.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from . import prompt_style, torch_versions
from .batch import BATCH_SIZE, caption_folder
from .captioner import CAPTIONERS, check_supported
from .checkpoint_family import detect_checkpoint
from .describe_server import API_KEY_VARIABLE, ServerError, server_describer
from .devices import default_device
from .engine import Engine, Extraction
from .errors import ModelError
from .exit_codes import EXIT_IMAGE_FAILED, EXIT_SETUP_FAILED
from .images import ImageError
from .models import DEFAULT_MODEL
from .options import (
    CAPTION_FILE_OPTIONS,
    CAPTION_OPTIONS,
    DEFAULT_CAPTIONER,
    OPTIONS,
    SERVER_OPTIONS,
    CaptionFileOptions,
    CaptionOptions,
    CommandLineParser,
    ExtractOptions,
    ServerOptions,
    add_argument,
)
from .records import RecordsError, RecordWriter, absolute, error_record, record
from .registry import kind_for, list_models
from .scoring import NonFiniteScores


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="easy-diffuser",
        description="Turn images into Stable Diffusion prompts with CLIP or a WD tagger (booru tags).",
        epilog="other commands:\n  easy-diffuser calibrate FOLDER ...   learn the model's tau from your images "
        "(easy-diffuser calibrate --help)\n  easy-diffuser check IMAGE --generator G   how faithful the prompt is: "
        "generate and compare\n  easy-diffuser refine IMAGE --generator G  better prompts, round by round"
        "\n  easy-diffuser dataset FOLDER ...       a dataset's tag report, bulk caption edits, undo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"registry name ({', '.join(list_models())}), ARCH/TAG, model or tagger folder, or checkpoint file",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("--recursive", action="store_true", help="also caption images in sub-folders")
    parser.add_argument(
        "--overwrite", action="store_true", help="make captions and records again (captions: --existing overwrite)"
    )
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument(
        "--cache-dir", default=None, help="weights and embedding cache (default: ~/.cache/easy_diffuser)"
    )
    parser.add_argument(
        "--vocabulary", action="append", default=[], metavar="DIR", help="extra folder of <category>.txt tag lists"
    )
    prompts = parser.add_argument_group("prompt options")
    for option in OPTIONS:
        add_argument(prompts, option, option.name)
    _add_caption_arguments(parser)
    files = parser.add_argument_group("caption files", "the file beside each image of a folder (docs/datasets.md)")
    for option in CAPTION_FILE_OPTIONS:
        add_argument(files, option, option.name)
    _add_scale_arguments(parser)
    return parser


def _add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scale", "records, throughput, and running on a Ray cluster (docs/scaling.md)")
    group.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="FILE.jsonl|FILE.parquet",
        help="also write one record per image (path, prompts, tags, model, tau, error); a rerun skips recorded images. "
        "With --engine ray: a folder (or s3://, gs:// URI) of shards, Parquet unless it ends in .jsonl",
    )
    group.add_argument(
        "--captions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write .txt captions beside images (default: on; with --engine ray: off)",
    )
    group.add_argument("--batch-size", type=_positive, default=BATCH_SIZE, help="images per forward pass (GPU: 64)")
    group.add_argument("--workers", type=_positive, default=None, help="decode threads (default: 1 per core, <= 8)")
    group.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="ray: run as a Ray Data job (pip install 'easy-diffuser[ray]', docs/scaling.md)",
    )
    group.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="a running Ray cluster (default: RAY_ADDRESS, else a local Ray)",
    )


def _add_caption_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "caption", "a captioner's sentence in front of the tags (needs: pip install 'easy-diffuser[caption]')"
    )
    group.add_argument(
        "--caption",
        nargs="?",
        const=DEFAULT_CAPTIONER,
        default=None,
        metavar="MODEL",
        help=f"caption first; MODEL is {', '.join(CAPTIONERS)} or a model folder (default {DEFAULT_CAPTIONER}); "
        "put it after the images or write --caption=MODEL, so that an image is not taken for MODEL",
    )
    for option in CAPTION_OPTIONS:
        add_argument(group, option, f"caption_{option.name}")
    server = parser.add_argument_group(
        "VLM server",
        "descriptions from an OpenAI-compatible server in place of a captioner in this process (docs/vlm-server.md); "
        f"the images are sent to it; its API key, if it wants one, from the environment variable {API_KEY_VARIABLE}",
    )
    for option in SERVER_OPTIONS:
        add_argument(server, option, f"caption_{option.name}")
    group.add_argument(
        "--checkpoint",
        default=None,
        metavar="NAME|FILE.safetensors",
        help="the checkpoint the prompts are for: --prompt-style automatic follows its family (Flux, SD3, Qwen-Image: "
        "sentences; others: tags), and with a tagger --family automatic takes its preset (Pony, NoobAI, ...); "
        "a .safetensors file's header metadata is read too",
    )
    group.add_argument(
        "--keep-in-vram",
        action="store_true",
        help="keep the captioner on the GPU beside CLIP (faster for folders, needs VRAM for both)",
    )


def options_from(args: argparse.Namespace) -> ExtractOptions:
    """The parsed flags as ExtractOptions (each flag was checked against the schema as it was read)."""
    caption = None
    if args.caption:
        caption = CaptionOptions(
            args.caption, **{option.name: getattr(args, f"caption_{option.name}") for option in CAPTION_OPTIONS}
        )
    return ExtractOptions(**{option.name: getattr(args, option.name) for option in OPTIONS}, caption=caption)


def server_from(args: argparse.Namespace) -> ServerOptions:
    """The VLM server flags (url empty: none)."""
    return ServerOptions(**{option.name: getattr(args, f"caption_{option.name}") for option in SERVER_OPTIONS})


def caption_file_options(args: argparse.Namespace) -> CaptionFileOptions:
    """The caption-file flags as options; --overwrite is the short form of --existing overwrite."""
    given = {option.name: getattr(args, option.name) for option in CAPTION_FILE_OPTIONS}
    if args.overwrite:
        given["existing"] = "overwrite"
    return CaptionFileOptions(**given)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    mismatch = torch_versions.mismatch()  # before any command: a mixed pip install fails at the first model
    if mismatch:
        print(f"error: {mismatch}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    if argv[:1] == ["calibrate"]:  # `easy-diffuser calibrate FOLDER ...`: its own parser
        from .calibration.cli import main as calibrate_main

        return calibrate_main(argv[1:])
    if argv[:1] in (["refine"], ["check"]):  # `easy-diffuser refine IMAGE --generator ...`: refine_cli.py
        from .refine_cli import main as refine_main

        return refine_main(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    args.captions = args.engine == "local" if args.captions is None else args.captions
    if not args.captions and not args.output:
        parser.error("--no-captions needs --output FILE for the records, or there is nothing to write")
    if args.overwrite and args.existing not in ("skip", "overwrite"):
        parser.error(f"--overwrite is --existing overwrite: give one of --overwrite and --existing {args.existing}")
    records = None
    try:
        options = options_from(args)
        describer = server_describer(server_from(args))  # None without --caption-url: nothing is sent
        target = detect_checkpoint(args.checkpoint) if args.checkpoint else None
        # The style and the captioner it runs, known before any download: the model's kind says what it writes.
        style = prompt_style.resolve(options, target, kind_for(args.model).writes)
        captioner = style.caption
        if captioner and describer:
            describer.check()  # a server that is down or refuses the key: one line before any model loads
        if args.engine == "ray":
            from .ray_job import main as ray_main  # only when asked: the core install and the webui never import Ray

            return ray_main(args, options, style, target, describer, caption_file_options(args))
        if captioner and not describer:
            check_supported(captioner.model)  # a transformers too old for it: one line before any download
        engine = Engine(
            args.model,
            args.device or default_device(),
            cache_dir=args.cache_dir,
            vocabulary_dirs=args.vocabulary,
            keep_in_vram=args.keep_in_vram,
        )
        engine.target, engine.describer = target, describer
        if style.caption and not describer:
            engine.captioner(style.caption.model)  # now: a missing captioner is a setup error, not one per image
        # Opened once the model is had: with --overwrite, a setup error must not cost the old records.
        records = RecordWriter(args.output, args.overwrite) if args.output else None
    except (ModelError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    failed = False
    try:
        for item in map(Path, args.inputs):
            run = _run_folder if _is_folder(item) else _run_image
            failed |= not run(engine, item, options, args, records)
    finally:
        unwritten = records is not None and not _close(records)
    if unwritten:
        return EXIT_SETUP_FAILED
    return EXIT_IMAGE_FAILED if failed else 0


def _close(records: RecordWriter) -> bool:
    """Close the records; False (after one error line) when a Parquet output could not be written. Its journal
    is kept, so a rerun merges it once the cause is fixed."""
    try:
        records.close()
    except RecordsError as error:
        print(f"error: {error}", file=sys.stderr)
        return False
    return True


def _is_folder(path: Path) -> bool:
    """A name the system refuses to look up (too long, a parent without permission) is not a folder: as an
    image it then gets its one `error:` line naming the file, and the other inputs still run."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _run_image(
    engine: Engine, path: Path, options: ExtractOptions, args: argparse.Namespace, records: RecordWriter | None
) -> bool:
    try:
        result = engine.extract(path, options, name=str(path))
    except (ImageError, NonFiniteScores, ServerError) as error:  # the image, its scores, or the server on it
        reason = f"{path}: {error}" if isinstance(error, NonFiniteScores) else str(error)  # the others name it
        print(f"error: {reason}", file=sys.stderr)
        if records:
            records.write([error_record(absolute(path), reason, engine.model_id)])
        return False
    _print(result, args.json)
    if records:
        records.write([record(result, absolute(path))])
    return True


def _run_folder(
    engine: Engine, folder: Path, options: ExtractOptions, args: argparse.Namespace, records: RecordWriter | None
) -> bool:
    bar = tqdm(desc=f"Captioning {folder}", unit="image", disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    summary = caption_folder(
        engine,
        folder,
        options,
        args.recursive,
        args.overwrite,
        progress,
        on_result=(lambda result: _print(result, True)) if args.json else None,
        records=records,
        captions=args.captions,
        batch_size=args.batch_size,
        workers=args.workers,
        caption_files=caption_file_options(args),
    )
    bar.close()
    for path, reason in summary.failed:
        print(f"error: {reason}", file=sys.stderr)
    print(f"{folder}: {summary}", file=sys.stderr)
    return not summary.failed


def _print(result: Extraction, as_json: bool) -> None:
    if as_json:
        data = result.to_dict()  # allow_nan=False: never a NaN that isn't JSON, should one get past the engine
        _write_out(
            json.dumps(data, ensure_ascii=False, allow_nan=False) + "\n", json.dumps(data, allow_nan=False) + "\n"
        )
        return
    name = f"{result.source}\n" if result.source else ""
    text = f"{name}Prompt: {result.prompt}\nNegative prompt: {result.negative_prompt}\n"
    text += f"(tau {result.tau:g}, {result.tau_source})\n\n"
    _write_out(text, text.encode("ascii", "backslashreplace").decode("ascii"))


def _write_out(text: str, ascii_text: str) -> None:
    """Print, or print the ASCII form when stdout can't encode a name (ascii or latin-1 locale, undecodable bytes)."""
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        sys.stdout.write(ascii_text)
    sys.stdout.flush()
