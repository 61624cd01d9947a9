"""Checkpoint family presets: detection from the checkpoint's name and safetensors metadata (gathered once by
checkpoint_family), the setting's override, the status line, and the prompts each family's model card asks for."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from easy_diffuser import families
from easy_diffuser.booru import RATINGS
from easy_diffuser.checkpoint_family import UNKNOWN, detect, detect_checkpoint, read_metadata
from easy_diffuser.options import OPTION, ExtractOptions, OptionError, schema_help


def checkpoint(folder: Path, name: str, metadata: dict[str, str] | None = None) -> Path:
    """A tiny safetensors 'checkpoint' with the given header metadata."""
    path = folder / name
    save_file({"model.diffusion_model.weight": np.zeros((2, 2), np.float32)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("name", "title"),
    [
        ("ponyDiffusionV6XL_v6StartWithThisOne.safetensors [67ab2fd8ec]", "Pony"),
        ("noobaiXLNAIXL_vPred10Version.safetensors", "Illustrious/NoobAI"),
        ("waiNSFWIllustrious_v140.safetensors", "Illustrious/NoobAI"),
        ("Illustrious-XL-v1.1.safetensors", "Illustrious/NoobAI"),
        ("animagineXLV31_v31.safetensors", "Animagine XL 3.1"),
        ("animagine-xl-4.0-opt.safetensors", "Animagine XL 4.0"),
        ("sd_xl_base_1.0.safetensors", None),
    ],
)
def test_automatic_reads_the_checkpoint_name(name: str, title: str | None) -> None:
    preset = families.choose("automatic", detect(name))
    assert (preset.family.title if preset.family else None) == title


def test_status_line_says_which_preset_and_why() -> None:
    assert (
        families.choose("automatic", detect("ponyDiffusionV6XL.safetensors [67ab2fd8ec]")).status
        == "Pony (from the checkpoint name ponyDiffusionV6XL)"
    )
    assert families.choose("automatic", None).status == "No preset (no checkpoint loaded)"
    assert families.choose("automatic", detect()).status == "No preset (no checkpoint loaded)"
    pony = detect("ponyDiffusionV6XL")
    assert families.choose("animagine4", pony).status == "Animagine XL 4.0 (chosen in the settings)"
    assert families.choose("none", pony).status == "No preset (family set to none)"


def test_metadata_names_the_family_when_the_file_name_does_not(tmp_path: Path) -> None:
    path = checkpoint(tmp_path, "myFavouriteMix_v3.safetensors", {"modelspec.title": "Pony Diffusion V6 XL"})
    preset = families.choose("automatic", detect_checkpoint(path))
    assert preset.family is families.CONVENTIONS["pony"]
    assert preset.status == "Pony (from the checkpoint's metadata modelspec.title: Pony Diffusion V6 XL)"


def test_a_trained_model_is_known_by_the_model_it_was_trained_from(tmp_path: Path) -> None:
    path = checkpoint(tmp_path, "my_lora_merge.safetensors", {"ss_sd_model_name": "noobaiXLNAIXL_epsilonPred11Version"})
    assert families.detect(detect_checkpoint(path)).family is families.CONVENTIONS["illustrious"]


def test_no_family_anywhere_gives_no_preset_and_says_where_it_looked(tmp_path: Path) -> None:
    path = checkpoint(tmp_path, "juggernautXL.safetensors", {"modelspec.title": "Juggernaut XL"})
    preset = families.choose("automatic", detect_checkpoint(path))
    assert preset.family is None
    assert preset.status == "No preset (no family recognised in the checkpoint name juggernautXL or its metadata)"
    assert preset.positive(["red", "circle"]) == "red, circle"
    assert preset.negative(["blue"]) == "blue"


def test_the_setting_overrides_what_the_checkpoint_says(tmp_path: Path) -> None:
    path = checkpoint(tmp_path, "ponyDiffusionV6XL.safetensors", {"modelspec.title": "Pony Diffusion V6 XL"})
    assert families.choose("noobai", detect_checkpoint(path)).family is families.CONVENTIONS["illustrious"]
    assert families.choose("none", detect_checkpoint(path)).family is None


@pytest.mark.parametrize(
    "content",
    [
        b"",  # empty
        b"\x01\x02",  # shorter than the length field
        struct.pack("<Q", 1 << 40) + b"{}",  # a length no header has: not read
        struct.pack("<Q", 50) + b'{"__metadata__": {"a": ',  # cut short
        struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc",  # not UTF-8
        struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000,  # nested deeper than Python's stack
        struct.pack("<Q", 5_020) + b'{"__metadata__": ' + b"9" * 5_000 + b"}",  # a number past int()'s 4,300 digits
    ],
)
def test_a_damaged_header_is_one_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ponyDiffusionV6XL.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"^.*ponyDiffusionV6XL\.safetensors: not a safetensors file") as error:
        detect_checkpoint(path)
    assert "\n" not in str(error.value) and len(str(error.value)) < 400


@pytest.mark.parametrize(
    "content",
    [
        struct.pack("<Q", 2) + b"[]",  # JSON, not an object
        struct.pack("<Q", 28) + json.dumps({"__metadata__": [1, 2]}).encode().ljust(28),  # metadata not an object
    ],
)
def test_a_header_without_metadata_leaves_the_name_to_tell_the_family(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ponyDiffusionV6XL.safetensors"
    path.write_bytes(content)
    detected = detect_checkpoint(path)
    assert detected.metadata == {} and detected.name == "ponyDiffusionV6XL"
    assert families.detect(detected).family is families.CONVENTIONS["pony"]


def test_metadata_values_that_are_not_strings_are_dropped(tmp_path: Path) -> None:
    header = json.dumps({"__metadata__": {"modelspec.title": 5, "ss_output_name": "ponyXL"}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    assert read_metadata(path) == {"ss_output_name": "ponyXL"}
    # A host's own copy of the header (A1111 parses values that look like JSON) is kept to its texts too.
    assert detect("model", {"modelspec.title": {"x": 1}, "ss_output_name": "ponyXL"}).metadata == {
        "ss_output_name": "ponyXL"
    }


def test_the_header_is_read_once_and_only_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One read of the header gives both decisions, the architecture family (the prompt style) and the preset;
    the weights after it are never read: SDXL checkpoints are 7 GB."""
    path = checkpoint(tmp_path, "model.safetensors", {"ss_output_name": "ponyXL"})
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    with path.open("ab") as handle:
        handle.write(b"\0" * 100_000)  # stands in for the weights
    requested = []
    real_open = open

    class Counting:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def read(self, size: int = -1) -> bytes:
            requested.append(size)
            return self.handle.read(size)

    monkeypatch.setattr("builtins.open", lambda *a, **k: Counting(real_open(*a, **k)))
    detected = detect_checkpoint(path)
    preset = families.choose("automatic", detected)
    assert requested == [8, length]  # one header read, no second one for the preset
    assert detected.family is UNKNOWN and detected.reason == "nothing tells its family ('model.safetensors')"
    assert preset.status == "Pony (from the checkpoint's metadata ss_output_name: ponyXL)"


def test_pony_prompt_follows_its_card() -> None:
    pony = families.CONVENTIONS["pony"]
    assert pony.positive(["rating_safe", "1girl", "solo"]) == (
        "score_9, score_8_up, score_7_up, score_6_up, score_5_up, score_4_up, rating_safe, 1girl, solo"
    )
    assert [pony.ratings[r] for r in RATINGS] == [
        "rating_safe",
        "rating_questionable",
        "rating_questionable",
        "rating_explicit",
    ]
    assert pony.negative_prompt(["blue", "star"], rating="general") == "blue, star"  # "needs no negative prompt"


def test_noobai_prefix_and_negative_template_come_after_the_images_own_negatives() -> None:
    noobai = families.CONVENTIONS["illustrious"]
    assert noobai.positive([noobai.ratings["general"], "red", "circle"]) == (
        "masterpiece, best quality, newest, absurdres, highres, safe, red, circle"
    )
    negative = noobai.negative_prompt(["blue", "star"], rating="general")
    assert negative.startswith(
        "blue, star, nsfw, worst quality, old, early, low quality, lowres, signature, username, logo, bad hands"
    )
    assert "nsfw" not in noobai.negative_prompt(["blue"], rating="explicit")


def test_animagine_puts_quality_tags_last() -> None:
    animagine = families.CONVENTIONS["animagine"]
    assert animagine.positive(["red", "circle", animagine.ratings["questionable"]]) == (
        "red, circle, nsfw, masterpiece, best quality, very aesthetic, absurdres"
    )
    animagine4 = families.CONVENTIONS["animagine4"]
    assert animagine4.positive(["red"]) == "red, masterpiece, high score, great score, absurdres"


def test_every_family_maps_every_wd_rating() -> None:
    for family in families.CONVENTIONS.values():
        assert set(family.ratings) == set(RATINGS), family.key


def test_family_is_one_option_of_the_schema() -> None:
    assert ExtractOptions().family == "automatic"
    assert ExtractOptions(family=" Pony ").family == "pony"
    with pytest.raises(OptionError, match=r"^family: must be one of automatic, none, illustrious, .*, not 'sdxl'$"):
        ExtractOptions(family="sdxl")
    with pytest.raises(OptionError, match="family"):
        ExtractOptions.from_mapping({"family": 3})
    assert schema_help()["family"]["choices"] == list(families.CHOICES)
    assert OPTION["family"].flag == "--family"


def test_cli_refuses_an_unknown_family_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from easy_diffuser.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["image.png", "--family", "sdxl"])
    assert exit_info.value.code == 2
    assert "--family: must be one of automatic, none" in capsys.readouterr().err


# --- a tagger's prompts inside the preset (the shipped shapes-booru tagger) ---------------------------


@pytest.fixture(scope="module")
def red_circle():
    from easy_diffuser.shapes import world

    return world.draw(world.Scene("red", "circle", "gray", "large", 0.7, 0.5, 0.5, 0.0), 64)


def test_a_tagger_prompt_takes_the_checkpoints_preset(tmp_path: Path, red_circle) -> None:
    from easy_diffuser.engine import Engine

    path = checkpoint(tmp_path, "model.safetensors", {"modelspec.title": "Pony Diffusion V6 XL"})
    engine = Engine("shapes-booru")
    engine.target = detect_checkpoint(path)
    result = engine.extract(red_circle)
    assert result.prompt.startswith("score_9, score_8_up, score_7_up, score_6_up, score_5_up, score_4_up, ")
    assert "rating_safe" in result.prompt and "red" in result.prompt and "gray background" in result.prompt
    assert result.to_dict()["preset"] == "Pony (from the checkpoint's metadata modelspec.title: Pony Diffusion V6 XL)"
    own = [tag.tag for tag in result.tags if tag.role == "negative"]
    noobai = engine.extract(red_circle, ExtractOptions(family="noobai"))
    assert noobai.prompt.startswith("masterpiece, best quality, newest, absurdres, highres, safe, ")
    assert noobai.negative_prompt.endswith(families.CONVENTIONS["illustrious"].negative)
    assert noobai.negative_prompt.startswith(", ".join(own + ["nsfw"]))  # the image's own negatives come first
    plain = engine.extract(red_circle, ExtractOptions(family="none"))
    assert plain.prompt.startswith("general, ") and plain.preset.family is None  # WD's own rating word


def test_clip_prompts_take_no_preset(red_circle) -> None:
    from easy_diffuser.engine import Engine

    engine = Engine("shapes-demo")
    engine.target = detect("ponyDiffusionV6XL")
    result = engine.extract(red_circle, ExtractOptions(family="pony"))
    assert "score_9" not in result.prompt and result.preset is None and result.to_dict()["preset"] is None


@pytest.mark.parametrize(
    "name, family",
    [
        ("x" * 100_000 + "_ponyXL", "Pony"),  # found at the end, shown by its start
        ("ponyXL\nfake status: all good\x1b[2J" + "y" * 100_000, "Pony"),  # a newline and a terminal escape
        ("mix\n" + "z" * 100_000, "No preset"),
    ],
)
def test_a_huge_or_multi_line_checkpoint_name_is_shown_short_on_one_line(name: str, family: str) -> None:
    status = families.choose("automatic", detect(name)).status
    assert status.startswith(family) and len(status) < 160
    assert status.isprintable() and "\n" not in status


def test_the_cli_json_preset_shows_a_huge_checkpoint_name_short(shapes_red_circle, tmp_path, capsys) -> None:
    from easy_diffuser.cli import main

    name = "ponyXL\n" + "y" * 100_000
    argv = [str(shapes_red_circle), "--model", "shapes-booru", "--cache-dir", str(tmp_path), "--json"]
    assert main([*argv, "--checkpoint", name]) == 0
    preset = json.loads(capsys.readouterr().out)["preset"]
    assert preset.startswith("Pony (from the checkpoint name ponyXL y") and len(preset) < 120
