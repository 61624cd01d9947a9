"""One options schema, one validation: the Python API, the command line and the tab refuse the
same values with the same one-line message naming the field (the HTTP route: tests/ui/test_http_api.py)."""

from __future__ import annotations

import math

import pytest

import easy_diffuser
from easy_diffuser.cli import build_parser, main, options_from
from easy_diffuser.options import CAPTION_OPTIONS, OPTIONS, CaptionOptions, ExtractOptions, OptionError
from easy_diffuser.webui import controls

BAD_VALUES = [
    ("max_tags", 0, "max_tags: must be a whole number from 1 to 75, not 0"),
    ("max_tags", -5, "max_tags: must be a whole number from 1 to 75, not -5"),
    ("max_tags", 76, "max_tags: must be a whole number from 1 to 75, not 76"),
    ("max_tags", 2.5, "max_tags: must be a whole number from 1 to 75, not 2.5"),
    ("max_tags", "12", "max_tags: must be a whole number from 1 to 75, not '12'"),
    ("max_tags", True, "max_tags: must be a whole number from 1 to 75, not True"),
    ("max_tags", math.inf, "max_tags: must be a whole number from 1 to 75, not inf"),
    ("max_per_category", 0, "max_per_category: must be a whole number from 1 to 75, not 0"),
    (
        "tau",
        math.nan,
        "tau: must be a number from -5 to 5, or none for automatic (calibrated for the model, else its default), "
        "not nan",
    ),
    ("tau", math.inf, "tau: must be a number from -5 to 5"),
    ("tau", -math.inf, "tau: must be a number from -5 to 5"),
    ("tau", 11.0, "tau: must be a number from -5 to 5"),
    ("tau", "high", "tau: must be a number from -5 to 5"),
    ("negatives", -1, "negatives: must be a whole number from 0 to 75, not -1"),
    ("negatives", math.nan, "negatives: must be a whole number from 0 to 75, not nan"),
    ("quality_negatives", 33, "quality_negatives: must be a whole number from 0 to 32, not 33"),
    ("weights", "yes", "weights: must be true or false, not 'yes'"),
    ("weights", 1, "weights: must be true or false, not 1"),
    ("weights", None, "weights: must be true or false, not None"),
]


@pytest.mark.parametrize("name, value, message", BAD_VALUES)
def test_the_python_api_refuses_a_bad_value_with_a_line_naming_the_field(name, value, message):
    with pytest.raises(OptionError) as raised:
        ExtractOptions(**{name: value})
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert raised.value.name == name


@pytest.mark.parametrize(
    "flag, text, problem",
    [
        ("--tags", "0", "must be a whole number from 1 to 75, not 0"),
        ("--tags", "-5", "must be a whole number from 1 to 75, not -5"),
        ("--tags", "many", "must be a whole number from 1 to 75, not 'many'"),
        ("--per-category", "0", "must be a whole number from 1 to 75, not 0"),
        ("--tau", "nan", "must be a number from -5 to 5"),
        ("--tau", "inf", "must be a number from -5 to 5"),
        ("--tau=-Infinity", None, "must be a number from -5 to 5"),
        ("--negatives", "-1", "must be a whole number from 0 to 75, not -1"),
        ("--quality-negatives", "1e9", "must be a whole number from 0 to 32, not '1e9'"),
        ("--caption-beams", "0", "must be a whole number from 1 to 16, not 0"),
        ("--caption-max-length", "nan", "must be a whole number from 1 to 512, not 'nan'"),
    ],
)
def test_the_command_line_refuses_the_same_values_naming_the_flag(flag, text, problem, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["image.png", flag] + ([text] if text else []))
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"easy-diffuser: error: argument {flag.split('=')[0]}: {problem}")


@pytest.mark.parametrize(
    "argv, line",
    [
        (["image.png", "--tags", "0"], "easy-diffuser: error: argument --tags: must be a whole number from 1 to 75"),
        (["image.png", "--tau", "nan"], "easy-diffuser: error: argument --tau: must be a number from -5 to 5"),
        (["image.png", "--no-such-flag"], "easy-diffuser: error: unrecognized arguments: --no-such-flag"),
        (["calibrate", "--negatives", "x"], "easy-diffuser calibrate: error: argument --negatives: must be a whole"),
        (["refine", "image.png"], "easy-diffuser refine: error: the following arguments are required: --generator"),
    ],
    ids=["tags", "tau", "unknown-flag", "calibrate", "refine"],
)
def test_a_bad_flag_costs_one_line_not_the_usage_block(argv, line, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and err.startswith(line)
    assert err.rstrip().endswith(f"(all options: {line.split(': error')[0]} --help)")


def test_every_flag_and_its_help_come_from_the_schema():
    parser = build_parser()
    text = parser.format_help()
    for option in OPTIONS + CAPTION_OPTIONS:
        assert option.flag in text
    args = parser.parse_args(["x.png"])
    assert options_from(args) == ExtractOptions()  # the flags' defaults are the schema's
    args = parser.parse_args(
        ["x.png", "--tags", "7", "--tau", "-0.5", "--weights", "--caption", "--caption-beams", "2"]
    )
    assert options_from(args) == ExtractOptions(max_tags=7, tau=-0.5, weights=True, caption=CaptionOptions(beams=2))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "bogus"], "error: device: 'bogus' is not a device"),
        (["--device", "cuda:7"], "error: device: cuda"),
        (["--vocabulary", "/no/such/folder"], "error: vocabulary folder /no/such/folder: no such folder"),
    ],
)
def test_setup_errors_are_one_line_and_exit_2(argv, message, shapes_red_circle, cache_dir, capsys):
    assert main([str(shapes_red_circle), "--model", "shapes-demo", "--cache-dir", str(cache_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_the_tab_refuses_what_the_schema_refuses():
    values = {
        "max_tags": 12.0,
        "auto_tau": False,
        "tau": 0.25,
        "negatives": 8.0,
        "quality_negatives": 0.0,
        "general_threshold": 0.35,
        "character_threshold": 0.85,
        "general_mcut": False,
        "character_mcut": False,
        "family": "automatic",
        "exclude_tags": "",
        "first_tags": "",
        "weights": False,
        "caption": False,
        "caption_model": "",
        "prompt_style": "automatic",
    }
    assert controls.extract_options(values).max_tags == 12  # sliders send floats
    with pytest.raises(OptionError, match="quality_negatives: must be a whole number from 0 to 32, not 40"):
        controls.extract_options({**values, "quality_negatives": 40})
    with pytest.raises(OptionError, match="first_tags: must be comma-separated tags, at most 4000 printable"):
        controls.extract_options({**values, "first_tags": "red,\nblue"})


@pytest.mark.parametrize(
    "caption, expected",
    [
        (None, None),
        (False, None),
        (True, CaptionOptions()),
        ("microsoft/git-base-coco", CaptionOptions("microsoft/git-base-coco")),
        ({"model": "microsoft/git-base-coco", "beams": 1}, CaptionOptions("microsoft/git-base-coco", beams=1)),
    ],
)
def test_caption_options_are_nested(caption, expected):
    assert ExtractOptions.from_mapping({"caption": caption}).caption == expected


@pytest.mark.parametrize(
    "values, message",
    [
        ({"caption": {"beams": 0}}, "caption.beams: must be a whole number from 1 to 16, not 0"),
        ({"caption": {"colour": "red"}}, "caption.colour: is not a caption option"),
        ({"caption": {"model": ""}}, "caption.model: must name a captioner"),
        ({"caption": 3}, "caption: must be true, false, a captioner name or an object, not 3"),
        ({"max_tag": 3}, "max_tag: is not an option; the options are"),
    ],
)
def test_mappings_are_checked_field_by_field(values, message):
    with pytest.raises(OptionError) as raised:
        ExtractOptions.from_mapping(values)
    assert str(raised.value).startswith(message)


def test_start_checks_the_options_before_loading_any_model(monkeypatch):
    monkeypatch.setattr("easy_diffuser.session.Engine", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    with pytest.raises(OptionError, match="max_tags: must be a whole number from 1 to 75, not 0"):
        easy_diffuser.start(model="shapes-demo", max_tags=0)
    with pytest.raises(OptionError, match="colour: is not an option"):
        easy_diffuser.start(model="shapes-demo", colour="red")


@pytest.mark.parametrize("model", [None, "", "  ", 3])
def test_a_model_that_is_not_a_name_is_a_one_line_model_error(model):
    with pytest.raises(easy_diffuser.ModelError) as raised:
        easy_diffuser.Engine(model)
    assert str(raised.value).startswith("model: must name a model (") and str(raised.value).endswith(f"not {model!r}")


def test_the_refine_pair_is_in_the_schema_with_its_length_limit():
    from easy_diffuser.options import MAX_PROMPT_CHARS, checked_prompts, schema_help

    fields = schema_help()["refine"]["fields"]
    assert fields["prompt"]["type"] == fields["negative_prompt"]["type"] == "text"
    assert fields["prompt"]["maximum"] == MAX_PROMPT_CHARS == 10_000
    lines = "line one\nline two\ttabbed"
    assert checked_prompts("a" * MAX_PROMPT_CHARS, lines) == ("a" * 10_000, lines)
    with pytest.raises(OptionError, match=r"^prompt: must be text of at most 10,000 characters.*, not 'aaaa"):
        checked_prompts("a" * (MAX_PROMPT_CHARS + 1), "")
    with pytest.raises(OptionError, match="^negative_prompt: must be text"):
        checked_prompts("red", "nul \0 inside")
