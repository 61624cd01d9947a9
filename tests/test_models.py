"""Model loading: local folders and files, never unpickling, and errors that say what to do."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from easy_diffuser.models import ModelError, _arch_from_file_name, load_model, read_state_dict


def test_model_folder_loads_in_eval_mode_and_is_reused(tiny_model_dir, cache_dir):
    first = load_model(str(tiny_model_dir), "cpu", cache_dir=cache_dir)
    assert not first.model.training
    assert first.vocabulary_dir == tiny_model_dir / "vocabulary"
    assert load_model(str(tiny_model_dir), "cpu", cache_dir=cache_dir) is first


def test_torch_checkpoint_file_loads_with_arch_prefix(tiny_model_dir, tiny_arch, tmp_path, cache_dir):
    state = read_state_dict(tiny_model_dir / "open_clip_model.safetensors")
    path = tmp_path / "tiny.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = load_model(f"{tiny_arch}={path}", "cpu", cache_dir=cache_dir)
    assert torch.equal(loaded.model.state_dict()["text_projection"], state["text_projection"])


class Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / "EXPLOITED",))


def test_pickled_code_is_refused_not_run(tiny_arch, tmp_path, cache_dir):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Exploit()}, path)
    with pytest.raises(ModelError, match="refused to load"):
        load_model(f"{tiny_arch}={path}", "cpu", cache_dir=cache_dir)
    assert not (Path(__file__).parent / "EXPLOITED").exists()


def test_wrong_weights_for_architecture_name_the_file(tiny_arch, tmp_path, cache_dir):
    path = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"nothing": torch.zeros(1)}, str(path))
    with pytest.raises(ModelError, match="other.safetensors: not a usable checkpoint"):
        load_model(f"{tiny_arch}={path}", "cpu", cache_dir=cache_dir)


def test_architecture_comes_from_the_file_name():
    assert _arch_from_file_name(Path("ViT-L-14-336-openai.safetensors")) == "ViT-L-14-336"
    assert _arch_from_file_name(Path("ViT-H-14-laion2b_s32b_b79k.bin")) == "ViT-H-14"
    with pytest.raises(ModelError, match="ARCH=PATH"):
        _arch_from_file_name(Path("weights.safetensors"))


def test_unknown_names_list_the_choices(cache_dir):
    with pytest.raises(ModelError, match="shapes-demo"):
        load_model("no-such-model", cache_dir=cache_dir)
    with pytest.raises(ModelError, match="no weights 'nonsense'"):
        load_model("ViT-B-32/nonsense", cache_dir=cache_dir)


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_offline_without_weights_names_the_file_to_place(offline, cache_dir):
    with pytest.raises(ModelError) as error:
        load_model("ViT-L-14/openai", cache_dir=cache_dir)
    message = str(error.value)
    assert message.startswith("no network and no cached weights for ViT-L-14/openai")
    assert f"save it as {cache_dir / 'ViT-L-14-openai'}." in message  # .pt for OpenAI's URL, .safetensors from the hub
    assert "https://" in message  # where to download it (open_clip 2.20 names OpenAI's URL, 3.x the hub page)


def test_weights_placed_by_hand_are_used_offline(offline, tiny_model_dir, tiny_arch, cache_dir):
    cache_dir.mkdir(parents=True)
    (cache_dir / f"{tiny_arch}-mine.safetensors").write_bytes(
        (tiny_model_dir / "open_clip_model.safetensors").read_bytes()
    )
    loaded = load_model(f"{tiny_arch}/mine", cache_dir=cache_dir)
    assert loaded.model_id == f"{tiny_arch}/mine"


@pytest.mark.parametrize("text", ['{"tau": ', "[1, 2]"])
def test_broken_defaults_file_in_a_model_folder_names_the_file(tiny_model_dir, tmp_path, cache_dir, text):
    import shutil

    folder = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "easy_diffuser.json").write_text(text)
    with pytest.raises(ModelError, match="my-model/easy_diffuser.json: "):
        load_model(str(folder), cache_dir=cache_dir)
