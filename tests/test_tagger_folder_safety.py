"""A tagger folder from anyone (issue 24 §1, §3, §5, §6): config.json's model_args reach timm only as far as they
build a network of bounded size, tag names are plain text in a prompt, and every bad value is one line naming
its file. Runs under the newest timm (.venv) and timm 0.9.5 (.venv-timm095), where checkpoint_path bites."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path

import pytest
import timm
import torch

from easy_diffuser.cli import main
from easy_diffuser.errors import ModelFileError
from easy_diffuser.kinds.model_args import MAX_TAGGER_PARAMETERS, NETWORKS, Sizes, check_model_args, network_of
from easy_diffuser.models import load_model
from easy_diffuser.vocabulary import load_vocabulary

from taggers import ARCHITECTURES, TAGS, write_tagger

# WD v3's config.json model_args (10,861 tags, 448 px), the keys tests/taggers.py mirrors at toy sizes.
WD_V3 = {
    "wd-vit-tagger-v3": ("vit_base_patch16_224", {"img_size": 448, "class_token": False, "global_pool": "avg",
                                                   "fc_norm": False, "act_layer": "gelu_tanh"}),
    "wd-vit-large-tagger-v3": ("vit_large_patch16_224", {"img_size": 448, "class_token": False,
                                                         "global_pool": "avg", "fc_norm": False,
                                                         "act_layer": "gelu_tanh"}),
    "wd-swinv2-tagger-v3": ("swinv2_base_window8_256", {"img_size": 448, "window_size": 14, "act_layer": "gelu_tanh"}),
    "wd-convnext-tagger-v3": ("convnext_base", {"act_layer": "gelu_tanh"}),
    "wd-eva02-large-tagger-v3": ("eva02_large_patch14_448", {"img_size": 448}),
}  # fmt: skip


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Path:
    return write_tagger(tmp_path_factory.mktemp("taggers") / "wd-vit", "vit")


@pytest.fixture
def never_built(monkeypatch):
    """timm.create_model fails the test if called: a refusal must come before anything is built."""

    def create_model(*args, **kwargs):
        raise AssertionError(f"timm.create_model was called with {kwargs}")

    monkeypatch.setattr(timm, "create_model", create_model)


def copy_of(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "tagger"
    shutil.copytree(folder, copy)
    return copy


def edit_config(folder: Path, model_args: dict | None = None, **pretrained_cfg) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["model_args"].update(model_args or {})
    for key, value in pretrained_cfg.items():
        if key in ("num_classes", "architecture"):
            config[key] = value
        else:
            config["pretrained_cfg"][key] = value
    (folder / "config.json").write_text(json.dumps(config))


def write_tags(folder: Path, rows: list[tuple[str, str]]) -> None:
    with (folder / "selected_tags.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        writer.writerows([index, name, category, 5] for index, (name, category) in enumerate(rows))


def one_line_error(folder: Path, cache_dir) -> str:
    with pytest.raises(ModelFileError) as error:
        load_model(str(folder), cache_dir=cache_dir)
    message = str(error.value)
    assert "\n" not in message and len(message) < 500, message
    return message


# -- §1: model_args never make timm read a file --------------------------------------------------------------------


class Payload:
    """Unpickled, creates `marker`: what a malicious checkpoint runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil_checkpoint(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A pickle that creates a marker file when loaded, with torch.load's pre-2.6 default (A1111's torch 2.1.2)."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(Payload(marker)))
    return evil, marker


def test_the_payload_runs_where_timm_leaves_torch_load_its_default(evil_checkpoint):
    """The hazard is real: timm.create_model(checkpoint_path=...) torch.loads the file, and a timm that does not ask
    for weights_only itself (0.9.5, sd-webui-controlnet's pin) gets the default this fixture forces: the pickle
    runs. A newer timm passes weights_only=True and the pickle is refused."""
    import inspect

    evil, marker = evil_checkpoint
    with pytest.raises(Exception):  # after the payload, the "state dict" is an open file (or the pickle is refused)
        timm.create_model("vit_base_patch16_224", img_size=32, embed_dim=32, depth=1, num_heads=2,
                          checkpoint_path=str(evil))  # fmt: skip
    weights_only = inspect.signature(timm.models.load_checkpoint).parameters.get("weights_only")
    assert marker.exists() == (weights_only is None or weights_only.default is not True)


def test_checkpoint_path_in_model_args_is_refused_unread(vit, tmp_path, evil_checkpoint, cache_dir):
    evil, marker = evil_checkpoint
    folder = copy_of(vit, tmp_path)
    edit_config(folder, {"checkpoint_path": str(evil)})
    message = one_line_error(folder, cache_dir)
    assert not marker.exists()
    assert message.startswith(str(folder / "config.json")) and "model_args.checkpoint_path is not read" in message


@pytest.mark.parametrize(
    "key, value",
    [
        ("pretrained", True),
        ("pretrained_cfg", {"file": "/tmp/evil.pth"}),
        ("pretrained_cfg_overlay", {"url": "https://example.com/evil.pth"}),
        ("pretrained_strict", False),
        ("device", "meta"),
        ("embed_layer", "timm.layers.PatchEmbed"),
    ],
)
def test_every_key_that_does_not_build_the_network_is_refused_before_timm(
    vit, tmp_path, key, value, never_built, cache_dir
):
    folder = copy_of(vit, tmp_path)
    edit_config(folder, {key: value})
    message = one_line_error(folder, cache_dir)
    assert message.startswith(str(folder / "config.json")) and f"model_args.{key} is not read" in message


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"img_size": "448"}, "model_args.img_size must be a whole number from 1 to 4096 or two of them"),
        ({"depth": 1.0}, "model_args.depth must be a whole number from 1 to 96, not 1.0"),
        ({"class_token": "false"}, "model_args.class_token must be true or false"),
        ({"act_layer": ["gelu"]}, "model_args.act_layer must be an activation's name"),
        ({"global_pool": "attention"}, "model_args.global_pool must be one of"),
        ({"mlp_ratio": 1e300}, "model_args.mlp_ratio must be a number from 0.1 to 16, not 1e+300"),
    ],
)
def test_model_args_values_are_checked_by_type_and_range(vit, tmp_path, change, expected, never_built, cache_dir):
    folder = copy_of(vit, tmp_path)
    edit_config(folder, change)
    assert expected in one_line_error(folder, cache_dir)


def test_an_architecture_of_another_family_is_refused(vit, tmp_path, never_built, cache_dir):
    folder = copy_of(vit, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architecture": "resnet50", "model_args": {}}))
    assert '"resnet50" is not an architecture a tagger is built from' in one_line_error(folder, cache_dir)


@pytest.mark.parametrize("name", list(WD_V3))
def test_the_wd_v3_configs_pass_the_checks_unchanged(name):
    architecture, model_args = WD_V3[name]
    assert check_model_args(architecture, dict(model_args), 10861, 448, Path("config.json")) == model_args


def test_an_architecture_of_unknown_default_size_must_state_its_sizes():
    """eva02_enormous (4.4e9 parameters) is an EVA whose size word the estimate does not know: it is refused
    unless model_args give the sizes, and then those are what is estimated."""
    architecture, path = "eva02_enormous_patch14_clip_224", Path("config.json")
    with pytest.raises(ModelFileError, match=r"config.json: the default sizes of eva02_enormous_patch14_clip_224 are "):
        check_model_args(architecture, {}, 10861, 224, path)
    check_model_args(architecture, {"embed_dim": 64, "depth": 2, "num_heads": 2}, 10861, 224, path)


@pytest.mark.parametrize("kind", list(ARCHITECTURES))
def test_the_size_estimate_is_within_a_fifth_of_the_built_network(kind):
    """Measured against timm's own count for each family, at toy sizes (the WD v3 sizes: docs/booru.md)."""
    from timm.layers import get_act_layer

    architecture, model_args, size = ARCHITECTURES[kind]
    args = {
        **model_args,
        **({"act_layer": get_act_layer(model_args["act_layer"])} if "act_layer" in model_args else {}),
    }
    network = timm.create_model(architecture, pretrained=False, num_classes=len(TAGS), **args)
    built = sum(p.numel() for p in network.parameters()) + sum(b.numel() for b in network.buffers())
    family = network_of(architecture)
    estimate = family.parameters(Sizes(model_args, architecture.split("_")[1], architecture, size, len(TAGS), Path()))
    assert 0.8 * built <= estimate <= 1.25 * built, (built, estimate)


# -- §5: the size is known before anything is allocated -------------------------------------------------------------


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"embed_dim": 4096, "depth": 4, "num_heads": 16}, "describes a network of about 8.1e+08 parameters"),
        ({"depth": 100000}, "model_args.depth must be a whole number from 1 to 96, not 100000"),
        ({"depth": 90, "embed_dim": 2048, "num_heads": 16}, "describes a network of about 4.5e+09 parameters"),
    ],
)
def test_a_network_too_large_for_a_tagger_is_refused_before_it_is_built(
    vit, tmp_path, change, expected, never_built, cache_dir
):
    folder = copy_of(vit, tmp_path)
    edit_config(folder, change)
    message = one_line_error(folder, cache_dir)
    assert message.startswith(str(folder / "config.json")) and expected in message
    assert f"at most {MAX_TAGGER_PARAMETERS:.0e}" in message or "must be" in message


def test_a_transformer_attending_over_too_many_patches_is_refused(vit, tmp_path, never_built, cache_dir):
    """4096 px in patches of 1: a narrow network, built at once, then 16.8 M patches attending to each other on
    every image. 448 px in patches of 16 (WD v3 ViT) pass, as the WD v3 configs above do."""
    folder = copy_of(vit, tmp_path)
    edit_config(folder, {"img_size": 4096, "patch_size": 1, "embed_dim": 8, "num_heads": 1}, input_size=[3, 4096, 4096])
    assert "model_args make 16777216 patches of an image" in one_line_error(folder, cache_dir)


def test_a_swinv2_window_table_counts_toward_the_bound(vit, tmp_path, never_built, cache_dir):
    """SwinV2's relative position index grows as window^4 and its shift mask as resolution^2 window^2: a huge
    image in one huge window is buffers, not parameters, and as refused."""
    folder = copy_of(vit, tmp_path)
    swin = {"img_size": 4096, "patch_size": 1, "window_size": 64, "embed_dim": 8, "depths": [2], "num_heads": [1]}
    config = json.loads((folder / "config.json").read_text())
    config.update(architecture="swinv2_tiny_window8_256", model_args=swin)
    config["pretrained_cfg"]["input_size"] = [3, 4096, 4096]
    (folder / "config.json").write_text(json.dumps(config))
    assert "describes a network of about" in one_line_error(folder, cache_dir)


# -- §3: tag names are text in a prompt -----------------------------------------------------------------------------

UNSAFE_NAMES = {
    "<lora:x:1>": "extra-network syntax",
    "a, b": "a comma",
    "two\nlines": "a line break, tab or other control character",
    "tab\there": "a line break, tab or other control character",
    "escape\x1b[31m": "a line break, tab or other control character",
    "BREAK": "BREAK or AND",
    "AND": "BREAK or AND",
    "rock_AND_roll": "BREAK or AND",
    "x_<hypernet:y:0.5>": "extra-network syntax",
}


@pytest.mark.parametrize("name", list(UNSAFE_NAMES))
def test_a_tag_name_the_webui_would_read_as_syntax_is_refused_naming_the_line(vit, tmp_path, name, cache_dir):
    folder = copy_of(vit, tmp_path)
    rows = [(tag, str(category)) for tag, category in TAGS]
    rows[5] = (name, "0")  # the header is line 1: this row starts on line 7
    write_tags(folder, rows)
    message = one_line_error(folder, cache_dir)
    line = 8 if "\n" in name else 7  # csv counts the line a row ends on
    assert (
        message.startswith(f"{folder / 'selected_tags.csv'}: line {line}: the tag ") and UNSAFE_NAMES[name] in message
    )


def test_names_that_only_look_like_syntax_load(vit, tmp_path, cache_dir):
    """Kaomoji with < > |, lowercase and/break, words holding AND: text, as WD's own list has them."""
    folder = copy_of(vit, tmp_path)
    names = [">_<", "<o>_<o>", "<|>_<|>", "hand_on_hip", "android", "breakdance", "rock_and_roll", "BREAKING",
             "a:b", "nail_polish_(x:y)"]  # fmt: skip
    rows = [(tag, str(category)) for tag, category in TAGS]
    rows[4 : 4 + len(names)] = [(name, "0") for name in names]
    write_tags(folder, rows)
    loaded = load_model(str(folder), cache_dir=cache_dir)
    assert set(names) <= set(loaded.tags.names)


def test_a_clip_tag_list_refuses_syntax_naming_the_line(tmp_path):
    (tmp_path / "style.txt").write_text("# styles\nwatercolor\noil painting\n<lora:detail:1>\n")
    with pytest.raises(ValueError, match=r"style\.txt: line 4: the tag \"<lora:detail:1>\" holds extra-network"):
        load_vocabulary([tmp_path])
    (tmp_path / "style.txt").write_text("watercolor\nBREAK\n")
    with pytest.raises(ValueError, match=r"style\.txt: line 2: .*BREAK or AND"):
        load_vocabulary([tmp_path])


def test_a_clip_tag_list_of_plain_words_loads_as_before(tmp_path):
    (tmp_path / "style.txt").write_text("watercolor\nrock and roll\n a,  b \n")
    assert load_vocabulary([tmp_path]).tags == ("watercolor", "rock and roll", "a b")


def test_a_clip_tag_list_with_syntax_is_one_error_line_on_the_command_line(tmp_path, capsys):
    (tmp_path / "style.txt").write_text("AND\n")
    image = tmp_path / "red.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (255, 0, 0)).save(image)
    code = main([str(image), "--model", "shapes-demo", "--vocabulary", str(tmp_path), "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {tmp_path / 'style.txt'}: line 1:") and err.count("\n") == 1


# -- §6: every bad value is one line naming its file -----------------------------------------------------------------


def _category(value: str):
    def change(folder: Path) -> None:
        write_tags(
            folder, [(tag, value if index == 2 else str(category)) for index, (tag, category) in enumerate(TAGS)]
        )

    return change


BAD_VALUES = {
    "interpolation a list": (
        lambda f: edit_config(f, interpolation=["bicubic"]),
        'config.json: pretrained_cfg.interpolation must be one of bicubic, bilinear, not ["bicubic"]',
    ),
    "input_size too small for the patches": (
        lambda f: edit_config(f, input_size=[3, 64, 1]),
        "config.json: pretrained_cfg.input_size [3, 64, 1] does not fit the network, which takes 32 x 32",
    ),
    "a denormal std": (
        lambda f: edit_config(f, std=[1e-320, 0.5, 0.5]),
        "config.json: pretrained_cfg.std must be three numbers from 0.001 to 1000",
    ),
    "a category int() can't read": (_category("²"), "selected_tags.csv: line 4 is not tag_id,name,category,count"),
    "a category of 5,000 digits": (_category("9" * 5000), "selected_tags.csv: line 4 is not tag_id,name,category"),
    "num_classes of 401 digits": (
        lambda f: edit_config(f, num_classes=10**400),
        f"config.json: num_classes must be a whole number from 1 to 1000000, not {'1' + '0' * 59}...",
    ),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_are_one_line_naming_the_file(vit, tmp_path, case, cache_dir):
    change, expected = BAD_VALUES[case]
    folder = copy_of(vit, tmp_path)
    change(folder)
    message = one_line_error(folder, cache_dir)
    assert message.startswith(str(folder)) and expected in message, message


def test_a_convnext_input_below_its_stride_is_refused_and_at_its_stride_runs(tmp_path, cache_dir):
    folder = write_tagger(tmp_path / "convnext", "convnext")
    edit_config(folder, input_size=[3, 31, 64])
    assert "does not fit the network, which takes at least 32 x 32 pixels" in one_line_error(folder, cache_dir)
    edit_config(folder, input_size=[3, 32, 64])
    loaded = load_model(str(folder), cache_dir=cache_dir)
    assert loaded.probabilities(torch.zeros(1, 3, 32, 64)).shape == (1, len(TAGS))


def test_every_family_names_its_timm_module():
    """The allow-list is keyed by timm's module: each module still exists and holds the WD v3 architectures."""
    assert {network_of(architecture).name for architecture, _ in WD_V3.values()} == {f.name for f in NETWORKS}
