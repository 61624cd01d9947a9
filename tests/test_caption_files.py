"""Caption files the way LoRA trainers read them: each option on a folder made here, the exact bytes written.

The shipped shapes-booru tagger sees a large yellow star on white as its character `twinkle_(shapes)`, and a red
circle as red and circle; shapes-demo, the shipped CLIP, sees the same circle as circle, red, large, white background.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from easy_diffuser.batch import caption_folder
from easy_diffuser.caption_files import (
    caption_items,
    expanded_character,
    merged,
    parse_replacements,
    split_tags,
    with_underscores,
)
from easy_diffuser.cli import main
from easy_diffuser.engine import Engine, Extraction
from easy_diffuser.options import CaptionFileOptions, ExtractOptions, OptionError
from easy_diffuser.selection import TagScore

from conftest import draw_scene

STAR = "twinkle \\(shapes\\), general, yellow, white background, large, star"  # the tagger's prompt of the star
CIRCLE = "general, circle, large, white background, red"  # and of the red circle
EXTENSION = (
    "must be a file extension such as .txt or .caption (letters, digits, - and _ after a dot, at most 32 characters, "
    "not an image's)"
)


@pytest.fixture(scope="module")
def tagger() -> Engine:
    return Engine("shapes-booru")


@pytest.fixture
def folder(tmp_path) -> Path:
    """A dataset: a large yellow star and a large red circle on white."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    draw_scene(folder / "star.png", colour="yellow", shape="star", background="white")
    draw_scene(folder / "circle.png", colour="red", shape="circle", background="white")
    return folder


def captions(folder: Path) -> dict[str, str]:
    """Every file in the folder but the images, by name: what a trainer would read."""
    return {path.name: path.read_text() for path in sorted(folder.iterdir()) if path.suffix != ".png"}


def caption(engine, folder, options=ExtractOptions(), **files):
    summary = caption_folder(engine, folder, options, caption_files=CaptionFileOptions(**files))
    assert not summary.failed
    return captions(folder)


def test_by_default_the_caption_file_is_the_prompt_as_before(tagger, shapes_engine, folder, tmp_path):
    assert caption(tagger, folder) == {"circle.txt": CIRCLE + "\n", "star.txt": STAR + "\n"}
    assert tagger.extract(folder / "star.png").prompt == STAR
    weighted = ExtractOptions(weights=True)
    (folder / "star.txt").unlink()
    (folder / "circle.txt").unlink()
    written = caption(shapes_engine, folder, weighted)
    assert written["circle.txt"] == shapes_engine.extract(folder / "circle.png", weighted).prompt + "\n"
    assert written["circle.txt"] == "(circle:1.05), red, large, (white background:0.95)\n"


@pytest.mark.parametrize(
    "files, star",
    [
        ({"trigger": "ohwx, my style"}, "ohwx, my style, " + STAR),
        ({"underscores": "keep"}, "twinkle_\\(shapes\\), general, yellow, white_background, large, star"),
        ({"escape_parentheses": False}, "twinkle (shapes), general, yellow, white background, large, star"),
        ({"character_expand": True}, "twinkle, shapes, general, yellow, white background, large, star"),
        ({"separator": ","}, STAR.replace(", ", ",")),
        (
            {"underscores": "keep", "escape_parentheses": False, "trigger": "ohwx", "separator": " | "},
            "ohwx | twinkle_(shapes) | general | yellow | white_background | large | star",
        ),
    ],
)
def test_each_option_writes_the_caption_it_says(tagger, folder, files, star):
    assert caption(tagger, folder, **files)["star.txt"] == star + "\n"


def test_the_trigger_leads_even_an_image_without_tags_and_is_not_repeated(tagger, folder):
    no_rating = "general,;sensitive,;questionable,;explicit,"  # an empty new removes the tag
    nothing = ExtractOptions(general_threshold=1.0, character_threshold=1.0, replace_tags=no_rating)
    written = caption(tagger, folder, nothing, trigger="ohwx")
    assert written == {"circle.txt": "ohwx\n", "star.txt": "ohwx\n"}
    (folder / "star.txt").unlink()
    assert (
        caption(tagger, folder, trigger="star, ohwx")["star.txt"] == "star, ohwx, " + STAR.removesuffix(", star") + "\n"
    )


def test_character_tags_first_and_an_extension_of_the_users_choice(tagger, folder):
    # "large" renamed to a count tag, which booru order puts before the character: --character-first undoes that.
    renamed = ExtractOptions(replace_tags="large,1girl")
    written = caption(tagger, folder, renamed, caption_extension=".caption", character_first=True)
    assert written == {
        "circle.caption": "1girl, general, circle, white background, red\n",
        "star.caption": "twinkle \\(shapes\\), 1girl, general, yellow, white background, star\n",
    }
    assert caption(tagger, folder, renamed, caption_extension=".wd14.txt")["star.wd14.txt"] == (
        "1girl, twinkle \\(shapes\\), general, yellow, white background, star\n"
    )


def test_replaced_tags_are_chosen_deduplicated_and_budgeted_as_themselves(tagger, shapes_engine, folder):
    assert caption(tagger, folder, ExtractOptions(replace_tags="circle,ring;white_background,"))["circle.txt"] == (
        "general, ring, large, red\n"
    )
    for path in folder.glob("*.txt"):
        path.unlink()
    # CLIP: red becomes circle, so the two are one tag and the shape category's next tag takes the place.
    assert caption(shapes_engine, folder, ExtractOptions(replace_tags="red,circle"))["circle.txt"] == (
        "circle, large, white background, square\n"
    )
    # Seven tokens hold "circle, red, large" (5) but not ", white background" (3 more); ", bg" (2) fits.
    budget = ExtractOptions(token_budget=7)
    redo = {"existing": "overwrite"}
    assert caption(shapes_engine, folder, budget, **redo)["circle.txt"] == "circle, red, large\n"
    renamed = ExtractOptions(token_budget=7, replace_tags="white background,bg")
    assert caption(shapes_engine, folder, renamed, **redo)["circle.txt"] == "circle, red, large, bg\n"
    # An escaped comma is part of the tag; the prompt itself changes too (replacement is before selection).
    commas = ExtractOptions(replace_tags="red,red\\, bright")
    assert shapes_engine.extract(folder / "circle.png", commas).prompt == "circle, red, bright, large, white background"


@pytest.mark.parametrize("mode", ["append", "prepend"])
def test_append_and_prepend_add_only_missing_tags_keep_the_users_bytes_and_change_nothing_on_a_rerun(
    tagger, folder, mode
):
    users = "My Words, Red , long_hair\r\nsecond line, kept\r\n"  # CRLF, odd spacing and case: all kept
    (folder / "circle.txt").write_bytes(users.encode())
    (folder / "star.txt").write_bytes(b"")  # an empty caption is filled in
    summary = caption_folder(tagger, folder, caption_files=CaptionFileOptions(existing=mode, trigger="ohwx"))
    assert len(summary.written) == 2 and not summary.failed
    added = "general, circle, large, white background"
    expected = {
        "append": f"ohwx, My Words, Red , long_hair, {added}\r\nsecond line, kept\r\n",
        "prepend": f"ohwx, {added}, My Words, Red , long_hair\r\nsecond line, kept\r\n",
    }[mode]
    assert (folder / "circle.txt").read_bytes() == expected.encode()
    assert (folder / "star.txt").read_text() == f"ohwx, {STAR}\n"
    before = {path: path.read_bytes() for path in folder.glob("*.txt")}
    for path in before:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    again = caption_folder(tagger, folder, caption_files=CaptionFileOptions(existing=mode, trigger="ohwx"))
    assert again.written == [] and len(again.unchanged) == 2 and "2 unchanged" in str(again)
    for path, data in before.items():
        assert path.read_bytes() == data and path.stat().st_mtime_ns == 1_000_000_000


def test_skip_keeps_captions_that_are_there_and_overwrite_replaces_them(tagger, folder):
    (folder / "circle.txt").write_text("mine\n")
    assert caption(tagger, folder)["circle.txt"] == "mine\n"
    assert caption(tagger, folder, existing="overwrite")["circle.txt"] == CIRCLE + "\n"


def test_a_caption_that_is_no_text_a_link_or_a_folder_is_one_failure_and_left_as_it_is(tagger, folder, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not the dataset's\n")
    (folder / "circle.txt").write_bytes(b"\xff\xfe binary")
    (folder / "star.txt").symlink_to(outside)
    summary = caption_folder(tagger, folder, caption_files=CaptionFileOptions(existing="append"))
    reasons = sorted(reason for _, reason in summary.failed)
    assert reasons == [
        f"{folder / 'circle.txt'}: not UTF-8 text, left as it is (save it as UTF-8 to add to it)",
        f"{folder / 'star.txt'}: cannot write the caption (a link, not a caption file; left as it is)",
    ]
    assert (folder / "circle.txt").read_bytes() == b"\xff\xfe binary" and (folder / "star.txt").is_symlink()
    assert outside.read_text() == "not the dataset's\n"
    # Overwrite replaces the link itself with a caption in the folder; the file it pointed to stays as it was.
    caption_folder(tagger, folder, caption_files=CaptionFileOptions(existing="overwrite"))
    assert not (folder / "star.txt").is_symlink() and outside.read_text() == "not the dataset's\n"


@pytest.mark.parametrize(
    "extension, problem",
    [
        (
            "../up",
            f"{EXTENSION}, not '../up'",
        ),
        ("./x", "must be a file extension"),
        (".a/b", "must be a file extension"),
        (".a\\b", "must be a file extension"),
        ("..txt", "must be a file extension"),
        ("", "must be a file extension"),
        (".", "must be a file extension"),
        (".t xt", "must be a file extension"),
        (
            ".png",
            f"{EXTENSION}, not '.png'",
        ),  # the caption would replace the image
        (".JPG", "must be a file extension"),
        (".tags.webp", "must be a file extension"),
        ("x" * 40, "must be a file extension"),
    ],
)
def test_an_extension_that_would_leave_the_folder_or_overwrite_an_image_is_refused(extension, problem):
    """The one definition of a caption extension, which the dataset tool takes too (options.ExtensionOption)."""
    with pytest.raises(OptionError) as refused:
        CaptionFileOptions(caption_extension=extension)
    assert str(refused.value).startswith(f"caption_extension: {problem}") and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"existing": 3}, "existing: must be one of skip, overwrite, append, prepend, not 3"),
        ({"underscores": "x"}, "underscores: must be one of keep, spaces, not 'x'"),
        ({"escape_parentheses": "yes"}, "escape_parentheses: must be true or false, not 'yes'"),
        ({"character_first": 1}, "character_first: must be true or false, not 1"),
        ({"character_expand": None}, "character_expand: must be true or false, not None"),
        (
            {"separator": "x" * 17},
            "separator: must be a separator such as ', ' (1 to 16 characters), not 'xxxxxxxxxxxxxxxxx'",
        ),
        ({"trigger": 5}, "trigger: must be words, at most 4000 printable characters, not '5'"),
        ({"caption_extension": "/x"}, "caption_extension: must be a file extension such as .txt or .caption"),
        ({"extension": ".txt"}, "extension: is not a caption file option; they are caption_extension, "),
    ],
)
def test_the_python_api_refuses_each_bad_value_in_one_line_naming_the_field(values, message):
    with pytest.raises(OptionError) as refused:
        CaptionFileOptions.from_mapping(values)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "flag, value, problem",
    [
        ("--caption-extension", "../x", "must be a file extension such as .txt or .caption"),
        ("--caption-extension", ".png", "must be a file extension such as .txt or .caption (letters, digits, - and _"),
        ("--existing", "merge", "must be one of skip, overwrite, append, prepend, not 'merge'"),
        ("--underscores", "none", "must be one of keep, spaces, not 'none'"),
        ("--separator", "", "must be a separator such as ', ' (1 to 16 characters), not ''"),
        ("--separator", "\n", "must be a separator such as ', ' (1 to 16 characters), at most 4000 printable"),
        ("--trigger", "a\tb", "must be words, at most 4000 printable characters"),
        ("--replace-tags", "red", "must be old,new pairs separated by ; (\\, for a comma in a tag; 'red' is not one)"),
        ("--replace-tags", "a,b,c", "must be old,new pairs separated by ;"),
    ],
)
def test_a_bad_value_on_the_command_line_is_one_line_naming_the_flag(flag, value, problem, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["folder", f"{flag}={value}"])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"easy-diffuser: error: argument {flag}: {problem}")


def test_the_command_line_writes_what_the_options_say_and_overwrite_is_existing_overwrite(folder, capsys):
    (folder / "star.caption").write_text("mine\n")
    common = [str(folder), "--model", "shapes-booru", "--caption-extension", ".caption"]
    assert main([*common, "--trigger", "ohwx", "--no-escape-parentheses", "--character-expand"]) == 0
    assert captions(folder) == {"circle.caption": f"ohwx, {CIRCLE}\n", "star.caption": "mine\n"}
    assert main([*common, "--overwrite", "--underscores", "keep"]) == 0
    assert captions(folder)["star.caption"] == "twinkle_\\(shapes\\), general, yellow, white_background, large, star\n"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*common, "--overwrite", "--existing", "append"])
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(
            "easy-diffuser: error: --overwrite is --existing overwrite: give one of --overwrite and --existing append"
        )
    )


def test_every_caption_file_flag_comes_from_the_schema_with_its_default():
    from easy_diffuser.cli import build_parser, caption_file_options
    from easy_diffuser.options import CAPTION_FILE_OPTION, CAPTION_FILE_OPTIONS, DATASET_OPTION

    parser = build_parser()
    text = parser.format_help()
    assert all(option.flag in text for option in CAPTION_FILE_OPTIONS) and "--no-escape-parentheses" in text
    assert caption_file_options(parser.parse_args(["x"])) == CaptionFileOptions()
    assert CAPTION_FILE_OPTION["caption_extension"] is DATASET_OPTION["caption_extension"]  # the dataset tool's too
    assert CaptionFileOptions(caption_extension=" caption").caption_extension == ".caption"  # kohya's form
    given = parser.parse_args(["x", "--overwrite", "--no-escape-parentheses", "--separator", ";", "--trigger", "t"])
    expected = CaptionFileOptions(existing="overwrite", escape_parentheses=False, separator=";", trigger="t")
    assert caption_file_options(given) == expected


# -- the text conventions, as pure functions (the dataset tool writes with them too) ---------------------


def test_underscores_keep_kaomoji_and_tags_of_three_characters():
    assert [with_underscores(tag, "spaces") for tag in ("long_hair", "^_^", ">_<", "-_-", "(o)_(o)")] == [
        "long hair",
        "^_^",
        ">_<",
        "-_-",
        "(o)_(o)",
    ]
    # A tagger's names arrive as prompts write them (spaces for underscores).
    assert with_underscores("long hair", "keep", tagger=True) == "long_hair"
    assert with_underscores("long hair", "keep") == "long hair"  # a CLIP vocabulary's phrase is as it is
    assert with_underscores("- -", "spaces", tagger=True) == "-_-"  # tag_text.written's "- -" for the prompt


def test_character_expansion_splits_the_last_series_as_kohya_does():
    assert expanded_character("saber_(fate)") == ["saber", "fate"]
    assert expanded_character("saber (fate)") == ["saber", "fate"]
    assert expanded_character("chara_(costume)_(series)") == ["chara_(costume)", "series"]
    assert expanded_character("plain") == ["plain"]
    assert expanded_character("(o)_(o)") == ["(o)_(o)"]  # a kaomoji is no character of a series


def test_replacement_lists_read_kohyas_escapes():
    assert parse_replacements("a,b; c\\,d , e\\;f ;gone,") == (("a", "b"), ("c,d", "e;f"), ("gone", ""))
    assert parse_replacements("") == ()
    for bad in ("a", "a,b,c", ",b"):
        with pytest.raises(ValueError, match="must be old,new pairs"):
            parse_replacements(bad)


def test_merging_keeps_every_other_byte_and_is_idempotent():
    items = ["ohwx", "red", "long hair"]
    assert merged("\ufeffRed, long_hair", items, "append", leading=1) == "\ufeffohwx, Red, long_hair"
    assert merged("\n\n  a ,b  \nrest", items, "append", leading=1) == "\n\n  ohwx, a ,b, red, long hair  \nrest"
    assert merged("a", items, "prepend") == "ohwx, red, long hair, a"
    assert merged("  \n", items, "append") == "ohwx, red, long hair\n"
    assert merged("ohwx, \\(red\\), long hair", ["ohwx", "(red)", "long_hair"], "append") is None
    once = merged("x", ["A sentence, with a comma", "red"], "append")
    assert once == "x, A sentence, with a comma, red"
    assert merged(once, ["A sentence, with a comma", "red"], "append") is None
    assert split_tags("a ; b;;c", "; ") == ["a", "b", "c"]


def test_character_first_puts_characters_before_count_tags_and_after_the_always_first_ones():
    def tag(name: str, category: str) -> TagScore:
        return TagScore(name, category, 0.9, 1.0, "positive")

    tags = [
        tag("1girl", "general"),
        tag("saber (fate)", "character"),
        tag("general", "rating"),
        tag("armor", "general"),
    ]
    result = Extraction("", "", tags, "m", 1.0, "option")
    style = CaptionFileOptions(character_first=True, character_expand=True, underscores="keep")
    assert caption_items(result, style, tagger=True) == ["saber", "fate", "1girl", "general", "armor"]
    assert caption_items(result, CaptionFileOptions(), tagger=True) == ["1girl", "saber \\(fate\\)", "general", "armor"]
    first = caption_items(result, CaptionFileOptions(character_first=True), tagger=True, first=("armor",))
    assert first == ["armor", "saber \\(fate\\)", "1girl", "general"]


def test_the_mapping_scores_a_merged_tag_by_its_best_member():
    from easy_diffuser.scoring import Scores
    from easy_diffuser.tag_replacement import replaced
    from easy_diffuser.vocabulary import Vocabulary

    vocabulary = Vocabulary(("red", "crimson", "blue", "tiny"), ("colour", "colour", "colour", "size"))
    view = replaced(vocabulary, None, [1, 1, 1, 1], lambda text: len(text.split()), "crimson,red;tiny,;blue,deep blue")
    assert view.vocabulary.tags == ("red", "deep blue") and list(view.token_costs) == [1, 2]
    scores = view.scores(Scores(torch.tensor([0.2, 0.7, 0.1, 0.9]), torch.tensor([0.0, 2.0, -1.0, 3.0])))
    assert scores.score.tolist() == pytest.approx([0.7, 0.1]) and scores.relevance.tolist() == [2.0, -1.0]
    assert replaced(vocabulary, None, [1] * 4, len, "nothing,here").target is None  # no tag matched: as it is


@pytest.mark.parametrize("family", ["none", "pony", "animagine"])
@pytest.mark.parametrize("caption, sentences", [("", False), ("A cat (sitting), on a bench.", False), ("A cat.", True)])
@pytest.mark.parametrize("weights", [False, True])
def test_by_default_the_caption_is_the_prompt_whatever_frames_it(family, caption, sentences, weights):
    """The prompt as the engine composes it (a family's quality tags around the tags, a captioner's text in front,
    weights): the default caption file holds exactly that."""
    from easy_diffuser.captioner import join
    from easy_diffuser.engine import framed
    from easy_diffuser.families import choose
    from easy_diffuser.prompt import escape, format_prompt

    def tag(name: str, category: str, relevance: float) -> TagScore:
        return TagScore(name, category, 0.9, relevance, "positive")

    tags = [tag("saber (fate)", "character", 3.0), tag("general", "rating", 0.0), tag("^_^", "general", -2.0)]
    preset = choose(family)
    tags = [
        replace(item, tag=preset.family.ratings["general"]) if item.category == "rating" and preset.family else item
        for item in tags
    ]
    prompt, _ = framed(preset, join(escape(caption), [format_prompt(tags, weights)], sentences), "", tags)
    result = Extraction(prompt, "", tags, "m", 1.0, "option", caption=caption, preset=preset)
    result = replace(result, prompt_style="sentences" if sentences else "tags")
    assert ", ".join(caption_items(result, CaptionFileOptions(), tagger=True, weights=weights)) == prompt


def test_no_caption_lands_outside_the_folder_through_a_linked_image_or_sub_folder(tagger, folder, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    draw_scene(elsewhere / "far.png", colour="red", shape="circle", background="white")
    (folder / "near.png").symlink_to(elsewhere / "far.png")  # a linked image: its caption is the link's, here
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    summary = caption_folder(tagger, folder, recursive=True, caption_files=CaptionFileOptions(caption_extension=".cap"))
    assert not summary.failed and sorted(path.name for path in elsewhere.iterdir()) == ["far.png"]
    assert (folder / "near.cap").read_text() == CIRCLE + "\n"
