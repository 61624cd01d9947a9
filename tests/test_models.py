"""Model loading: local folders and files, never unpickling, and errors that say what to do."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from easy_diffuser.errors import ModelError
from easy_diffuser.kinds.clip_loading import arch_from_file_name
from easy_diffuser.models import load_model
from easy_diffuser.weights import read_state_dict


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
    assert arch_from_file_name(Path("ViT-L-14-336-openai.safetensors")) == "ViT-L-14-336"
    assert arch_from_file_name(Path("ViT-H-14-laion2b_s32b_b79k.bin")) == "ViT-H-14"
    with pytest.raises(ModelError, match="ARCH=PATH"):
        arch_from_file_name(Path("weights.safetensors"))


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


@pytest.fixture
def hanging_up_server(monkeypatch):
    """The hub and OpenAI's server as one local server that hangs up on every connection, and counts them.

    Without network the hub's downloader retried each file for about a minute ("Retrying in 8s [Retry 5/5]")."""
    import huggingface_hub.constants

    from easy_diffuser.kinds import clip_loading

    listener = socket.create_server(("127.0.0.1", 0))
    connections = []

    def hang_up() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            connections.append(connection)
            connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    address = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", address)
    pretrained_config = clip_loading.pretrained_config
    monkeypatch.setattr(  # open_clip 2.20 also names OpenAI's .pt on its own server
        clip_loading,
        "pretrained_config",
        lambda arch, tag: {**pretrained_config(arch, tag), "url": f"{address}/ViT-L-14.pt"},
    )
    yield address, connections
    listener.close()


def extract_on_the_command_line(image: Path, cache_dir: Path, capsys) -> str:
    from easy_diffuser import cli

    assert cli.main([str(image), "--cache-dir", str(cache_dir), "--device", "cpu"]) == 2  # the setup error's code
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def extract_from_python(image: Path, cache_dir: Path, capsys) -> str:
    from easy_diffuser import Engine

    with pytest.raises(ModelError) as error:
        Engine(cache_dir=cache_dir).extract(image)
    return f"error: {error.value}\n" + capsys.readouterr().err


@pytest.mark.parametrize("surface", [extract_on_the_command_line, extract_from_python])
def test_without_network_the_default_model_fails_in_one_line_without_retries(
    hanging_up_server, surface, tmp_path, cache_dir, capsys, caplog
):
    address, connections = hanging_up_server
    image = Path(__file__).parents[1] / "docs" / "sample.png"
    shown = surface(image, cache_dir, capsys)
    assert len(connections) == 1  # one look at the server for its three files, no download attempted
    assert shown.count("\n") == 1 and shown.startswith("error: no network and no cached weights for ViT-L-14/openai")
    assert f"{address} is not reachable" in shown and f"save it as {cache_dir / 'ViT-L-14-openai'}" in shown
    assert not [record for record in caplog.records if "Retrying" in record.getMessage()]
    readme = (Path(__file__).parents[1] / "docs" / "troubleshooting.md").read_text()
    as_documented = shown.replace(address, "https://huggingface.co").split(" is not reachable")[0]
    assert f"| `{as_documented} is not reachable: ...)` |" in readme  # the troubleshooting row


@pytest.mark.parametrize("text", ['{"tau": ', "[1, 2]"])
def test_broken_defaults_file_in_a_model_folder_names_the_file(tiny_model_dir, tmp_path, cache_dir, text):
    import shutil

    folder = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "easy_diffuser.json").write_text(text)
    with pytest.raises(ModelError, match="my-model/easy_diffuser.json: "):
        load_model(str(folder), cache_dir=cache_dir)


def test_cpu_matmuls_keep_fp32_results_and_put_the_setting_back():
    """oneDNN's products on a CPU without AMX are fp32 ones: the same numbers to fp32 rounding, never bf16's."""
    from easy_diffuser.devices import cpu_matmuls

    torch.manual_seed(0)
    inputs, weight = torch.randn(64, 256), torch.randn(512, 256)
    exact = inputs.double() @ weight.double().T
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    before = getattr(matmul, "fp32_precision", None)
    with pytest.raises(RuntimeError), cpu_matmuls(torch.device("cpu")):
        product = torch.nn.functional.linear(inputs, weight)
        raise RuntimeError("a failing forward pass")
    assert getattr(matmul, "fp32_precision", None) == before
    assert (product.double() - exact).abs().max() / exact.abs().max() < 1e-5  # bf16 would be about 4e-3
