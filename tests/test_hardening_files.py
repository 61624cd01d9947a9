"""Hostile and damaged files: checkpoints, calibration files, model defaults, images and caches.

Each case either gives the right result or a one-line error naming the file, and nothing a
file holds ever runs.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Tuple

import pytest
import torch

from easy_diffuser import cli
from easy_diffuser.errors import ModelError
from easy_diffuser.kinds.clip_loading import pretrained_config, weight_sources
from easy_diffuser.models import load_model
from easy_diffuser.weights import read_state_dict

PRECIOUS = b"precious data"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*:FutureWarning")


class FileWriter(torch.nn.Module):
    """A TorchScript module whose __setstate__ maps `target` shared and overwrites it: torch.jit.load runs that."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.weight = torch.nn.Parameter(torch.zeros(2))

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool, torch.Tensor]:
        return (self.target, self.training, self.weight)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool, torch.Tensor]) -> None:
        self.target = state[0]
        self.training = state[1]
        mapped = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)
        mapped.fill_(65)
        self.weight = state[2] + mapped[:2].float() * 0  # uses `mapped`, so the compiler keeps the write

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def malicious_archive(path: Path, target: Path) -> Path:
    torch.jit.save(torch.jit.script(FileWriter(str(target))), str(path))
    return path


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_bytes(PRECIOUS)
    return path


def test_the_malicious_archive_really_writes_files_when_run(tmp_path, victim):
    """The payload the other tests feed us works: torch.jit.load creates one file and overwrites another."""
    created = tmp_path / "created"
    torch.jit.load(str(malicious_archive(tmp_path / "a.pt", created)))
    torch.jit.load(str(malicious_archive(tmp_path / "b.pt", victim)))
    assert created.read_bytes() == b"A" * 8
    assert victim.read_bytes().startswith(b"A" * 8)


def assert_inert(created: Path, victim: Path) -> None:
    assert not created.exists()
    assert victim.read_bytes() == PRECIOUS


def one_line_error(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("target_is_victim", [False, True])
def test_malicious_torchscript_is_inert_as_arch_equals_file(tiny_arch, tmp_path, cache_dir, victim, target_is_victim):
    created = tmp_path / "created"
    path = malicious_archive(tmp_path / "evil.pt", victim if target_is_victim else created)
    with pytest.raises(ModelError) as error:
        load_model(f"{tiny_arch}={path}", cache_dir=cache_dir)
    assert "not a usable checkpoint" in one_line_error(error, path)
    assert_inert(created, victim)


def test_malicious_torchscript_is_inert_placed_in_the_cache_folder(tiny_arch, tmp_path, cache_dir, victim, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    created = tmp_path / "created"
    cache_dir.mkdir()
    path = malicious_archive(cache_dir / f"{tiny_arch}-mine.pt", created)
    with pytest.raises(ModelError) as error:
        load_model(f"{tiny_arch}/mine", cache_dir=cache_dir)
    one_line_error(error, path)
    assert_inert(created, victim)


def test_malicious_torchscript_is_inert_through_the_command_line(tiny_arch, tmp_path, cache_dir, victim, capsys):
    created = tmp_path / "created"
    path = malicious_archive(tmp_path / f"{tiny_arch}-evil.pt", created)
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(image)
    assert cli.main([str(image), "--model", str(path), "--cache-dir", str(cache_dir)]) == cli.EXIT_SETUP_FAILED
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {path}: ")
    assert_inert(created, victim)


def test_read_state_dict_of_a_malicious_archive_runs_nothing(tmp_path, victim):
    created = tmp_path / "created"
    state = read_state_dict(malicious_archive(tmp_path / "evil.pt", created))
    assert state == {}  # its state is what __getstate__ returned, not module attributes: no weights
    assert_inert(created, victim)


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.scale = torch.nn.Parameter(torch.randn(3).half())
        self.register_buffer("counts", torch.arange(4))
        self.mask = torch.ones(2, 2)  # a plain attribute, not part of the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.mask.sum()


def test_benign_torchscript_weights_are_read_exactly_as_torch_jit_would(tmp_path):
    path = tmp_path / "small.pt"
    torch.jit.save(torch.jit.script(Small()), str(path))
    expected = torch.jit.load(str(path)).state_dict()
    state = read_state_dict(path)
    assert set(state) == set(expected) == {"linear.weight", "linear.bias", "scale", "counts"}
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value)


def test_scripted_tiny_clip_loads_through_the_restricted_reader(tiny_model_dir, tiny_arch, tmp_path, cache_dir):
    """An OpenAI-style TorchScript CLIP (here: open_clip's tiny config, scripted) loads its weights, and works."""
    from easy_diffuser.kinds.clip_loading import architecture

    original = load_model(str(tiny_model_dir), cache_dir=cache_dir)
    scripted, _ = architecture(tiny_arch)
    scripted.load_state_dict(original.model.state_dict())
    path = tmp_path / "tiny-scripted.pt"  # no "openai" in the name: same GELU as the original
    torch.jit.save(torch.jit.script(scripted), str(path))
    loaded = load_model(f"{tiny_arch}={path}", cache_dir=cache_dir)
    for key, value in original.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    tokens = original.tokenizer(["a red circle"])
    assert torch.allclose(loaded.model.encode_text(tokens), original.model.encode_text(tokens), atol=1e-6)


class Payload:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_bytes, (self.target, b"pwned"))


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pth", ".ckpt"])
def test_pickled_code_is_refused_in_every_torch_suffix(tiny_arch, tmp_path, cache_dir, victim, suffix):
    path = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": {"weight": Payload(victim)}}, path)
    with pytest.raises(ModelError) as error:
        load_model(f"{tiny_arch}={path}", cache_dir=cache_dir)
    assert "refused to load" in one_line_error(error, path)
    assert victim.read_bytes() == PRECIOUS


def test_os_system_payload_is_refused(tiny_arch, tmp_path, cache_dir):
    import os

    created = tmp_path / "created"

    class System:
        def __reduce__(self):
            return (os.system, (f"touch {created}",))

    path = tmp_path / "system.pt"
    torch.save(System(), path)
    with pytest.raises(ModelError, match="refused to load"):
        load_model(f"{tiny_arch}={path}", cache_dir=cache_dir)
    assert not created.exists()


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("not a zip", "refused to load"),
        ("zip without data.pkl", "no data.pkl"),
        ("foreign global", "refused to rebuild os.system"),
        ("storage out of bounds", "out of bounds|whole number"),
        ("empty file", "refused to load"),
    ],
)
def test_damaged_or_foreign_torchscript_archives_are_refused_in_one_line(
    tiny_arch, tmp_path, cache_dir, damage, reason
):
    import io
    import pickle
    import zipfile

    good = tmp_path / "good.pt"
    torch.jit.save(torch.jit.script(Small()), str(good))
    path = tmp_path / "bad.pt"
    members = {info.filename: zipfile.ZipFile(good).read(info) for info in zipfile.ZipFile(good).infolist()}
    data_pkl = next(name for name in members if name.endswith("/data.pkl"))
    if damage == "zip without data.pkl":
        del members[data_pkl]
    elif damage == "foreign global":
        members[data_pkl] = b"cos\nsystem\n(S'true'\ntR."  # os.system('true') as protocol-0 pickle
    elif damage == "storage out of bounds":
        members = {name: (data[:2] if "/data/" in name else data) for name, data in members.items()}
    if damage in ("not a zip", "empty file"):
        path.write_bytes(b"" if damage == "empty file" else pickle.dumps({"a": 1}))
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        path.write_bytes(buffer.getvalue())
    with pytest.raises(ModelError) as error:
        load_model(f"{tiny_arch}={path}", cache_dir=cache_dir)
    assert re.search(reason, one_line_error(error, path))


def test_default_model_downloads_safetensors_first_and_never_lets_open_clip_load(monkeypatch):
    sources = weight_sources(pretrained_config("ViT-L-14", "openai"))
    assert (sources[0].hub_repo, sources[0].filename) == (
        "timm/vit_large_patch14_clip_224.openai",
        "open_clip_model.safetensors",
    )
    assert sources[-1].url.endswith("/ViT-L-14.pt")  # OpenAI's TorchScript only when the hub has nothing
    for arch, tag in [("ViT-H-14", "laion2b_s32b_b79k"), ("ViT-bigG-14", "laion2b_s39b_b160k")]:
        assert weight_sources(pretrained_config(arch, tag))[0].filename == "open_clip_model.safetensors"


def test_open_clip_3_tables_are_read_the_same_way(monkeypatch):
    """open_clip 3.x names both OpenAI's URL and the hub repository, with quick_gelu."""
    from easy_diffuser.kinds import clip_loading

    cfg_3x = {
        "url": "https://openaipublic.azureedge.net/clip/models/b8cc/ViT-L-14.pt",
        "hf_hub": "timm/vit_large_patch14_clip_224.openai/",
        "quick_gelu": True,
    }
    monkeypatch.setattr(clip_loading.open_clip_module(), "get_pretrained_cfg", lambda arch, tag: cfg_3x)
    sources = weight_sources(pretrained_config("ViT-B-16", "openai"))
    assert [s.filename or s.url for s in sources] == [
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
        cfg_3x["url"],
    ]
    named_file = weight_sources({"hf_hub": "org/repo/weights.bin"})
    assert [(s.hub_repo, s.filename) for s in named_file] == [
        ("org/repo", "weights.safetensors"),
        ("org/repo", "weights.bin"),
    ]


def test_pretrained_weights_are_read_by_us_not_by_open_clip(tiny_model_dir, tiny_arch, cache_dir, monkeypatch):
    """ARCH/TAG downloads: open_clip only fetches the file; our reader loads it (open_clip would torch.load it)."""
    from easy_diffuser.kinds import clip_loading

    weights = tiny_model_dir / "open_clip_model.safetensors"
    monkeypatch.setattr(
        clip_loading, "pretrained_config", lambda arch, tag: {"hf_hub": "org/tiny/", "mean": None, "std": None}
    )
    fetched = []

    def fake_download(repo, filename, cache_dir, local_files_only):
        fetched.append((repo, filename, local_files_only))
        if filename != "open_clip_model.safetensors":
            raise AssertionError("the .bin must not be fetched when the safetensors is there")
        return str(weights)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load was called"))
    loaded = load_model(f"{tiny_arch}/hubbed", cache_dir=cache_dir)
    assert fetched == [("org/tiny", "open_clip_model.safetensors", True)]  # the cached file, no download
    expected = read_state_dict(weights)
    assert torch.equal(loaded.model.state_dict()["text_projection"], expected["text_projection"])


def test_scoped_weights_only_is_thread_safe_and_leaves_other_threads_alone(monkeypatch):
    """Overlapping loads on many threads: forced weights_only inside, untouched outside, and restored after."""
    from easy_diffuser.weights import weights_only_torch_load

    seen: dict[str, list] = {"inside": [], "outside": []}
    lock = threading.Lock()

    def original(*args, **kwargs):
        with lock:
            seen[threading.current_thread().name.split("-")[0]].append(kwargs.get("weights_only"))

    monkeypatch.setattr(torch, "load", original)
    entered = threading.Barrier(9)
    leave = [threading.Event() for _ in range(8)]

    def inside(index: int) -> None:
        with weights_only_torch_load():
            entered.wait()
            leave[index].wait()
            torch.load("x", weights_only=False)

    def outside() -> None:
        torch.load("x", weights_only=False)

    threads = [threading.Thread(target=inside, args=(i,), name=f"inside-{i}") for i in range(8)]
    for thread in threads:
        thread.start()
    entered.wait()  # all eight are inside at once
    checker = threading.Thread(target=outside, name="outside-0")
    checker.start()
    checker.join()
    for index in (3, 0, 7, 1, 6, 2, 5, 4):  # leave in an order unlike the entry order
        leave[index].set()
    for thread in threads:
        thread.join()
    assert seen["inside"] == [True] * 8
    assert seen["outside"] == [False]
    assert torch.load is original


# --- Calibration files and model-folder defaults -------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000

DAMAGED_CALIBRATIONS = {
    "tau NaN": '{"tau": NaN, "negatives": 3}',
    "tau Infinity": '{"tau": Infinity}',
    "tau -Infinity": '{"tau": -Infinity}',
    "tau overflows to infinity": '{"tau": 1e999}',
    "tau a string": '{"tau": "0.5"}',
    "tau a boolean": '{"tau": true}',
    "tau null": '{"tau": null}',
    "tau out of range": '{"tau": 1000}',
    "no tau": '{"negatives": 3}',
    "negatives NaN": '{"tau": 0.5, "negatives": NaN}',
    "negatives fractional": '{"tau": 0.5, "negatives": 2.5}',
    "negatives negative": '{"tau": 0.5, "negatives": -1}',
    "negatives too many": '{"tau": 0.5, "negatives": 1000}',
    "negatives a string": '{"tau": 0.5, "negatives": "6"}',
    "NaN in another field": '{"tau": 0.5, "loss": NaN}',
    "deeply nested": DEEP,
    "deeply nested object": '{"tau": 0.5, "table": ' + DEEP + "}",
    "integer of 5000 digits": '{"tau": ' + "1" * 5000 + "}",
    "a list": "[0.5]",
    "empty": "",
    "truncated": '{"tau": 0.',
    "not UTF-8": b"\xff\xfe\x00{",
}


@pytest.fixture(scope="module")
def calibrated_engine(tmp_path_factory):
    from easy_diffuser.engine import Engine, calibration_path

    engine = Engine("shapes-demo", "cpu", cache_dir=tmp_path_factory.mktemp("calibration-cache"))
    path = calibration_path(engine.cache_dir, engine.model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    return engine, path


def extract_summary(engine, image: Path) -> tuple:
    result = engine.extract(image)
    return result.prompt, result.negative_prompt, result.tau, result.tau_source


@pytest.mark.parametrize("name", DAMAGED_CALIBRATIONS)
def test_damaged_calibration_is_ignored_with_one_warning(
    calibrated_engine, shapes_red_circle, caplog, monkeypatch, name
):
    from easy_diffuser import engine as engine_module

    engine, path = calibrated_engine
    monkeypatch.setattr(engine_module, "_warned", set())
    path.unlink(missing_ok=True)
    expected = extract_summary(engine, shapes_red_circle)
    content = DAMAGED_CALIBRATIONS[name]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with caplog.at_level("WARNING"):
        first = extract_summary(engine, shapes_red_circle)
        second = extract_summary(engine, shapes_red_circle)
    path.unlink()
    assert first == second == expected  # the defaults, as if there were no file
    assert expected[3] == "model default"
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "\n" not in warnings[0]


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_calibration_path_that_is_not_a_file_is_ignored(calibrated_engine, shapes_red_circle, monkeypatch, kind):
    import os

    from easy_diffuser import engine as engine_module

    engine, path = calibrated_engine
    monkeypatch.setattr(engine_module, "_warned", set())
    path.unlink(missing_ok=True)
    expected = extract_summary(engine, shapes_red_circle)
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    try:
        assert extract_summary(engine, shapes_red_circle) == expected  # and it returned: a FIFO does not block
    finally:
        path.rmdir() if kind == "folder" else path.unlink()


def test_a_good_calibration_is_still_used(calibrated_engine, shapes_red_circle):
    engine, path = calibrated_engine
    path.write_text(json.dumps({"tau": 0.25, "negatives": 2, "loss": 0.5}))
    try:
        result = engine.extract(shapes_red_circle)
    finally:
        path.unlink()
    assert result.tau == 0.25 and result.tau_source == f"calibrated ({path})"


def test_read_calibration_is_reusable_by_the_writer(tmp_path):
    from easy_diffuser.settings_files import SettingsFileError, check_calibration, read_calibration

    assert read_calibration(tmp_path / "absent.json") == {}
    assert check_calibration({"tau": 1.0, "negatives": 4.0}, "x.json") == {"tau": 1.0, "negatives": 4}
    for bad in ({"tau": float("nan")}, {"tau": float("inf")}, {"tau": 1.0, "negatives": float("inf")}):
        with pytest.raises(SettingsFileError, match="x.json: "):
            check_calibration(dict(bad), "x.json")


DAMAGED_DEFAULTS = {
    "tau NaN": '{"tau": NaN}',
    "tau Infinity": '{"tau": Infinity}',
    "prob_temperature zero": '{"prob_center": 0.5, "prob_temperature": 0}',
    "max_per_category a string": '{"max_per_category": "3"}',
    "negatives fractional": '{"negatives": 2.5}',
    "NaN in a nested note": '{"calibration": {"loss": NaN}}',
    "deeply nested": DEEP,
}


@pytest.mark.parametrize("name", DAMAGED_DEFAULTS)
def test_damaged_model_folder_defaults_are_one_line_errors(tiny_model_dir, tmp_path, cache_dir, name):
    import shutil

    folder = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, folder)
    path = folder / "easy_diffuser.json"
    path.write_text(DAMAGED_DEFAULTS[name])
    with pytest.raises(ModelError) as error:
        load_model(str(folder), cache_dir=cache_dir)
    assert one_line_error(error, path).startswith(f"{path}: ")


# --- The text-embedding cache: its damage costs speed, never the result -----------------------------


@pytest.fixture
def tiny_loaded(tiny_model_dir, cache_dir):
    return load_model(str(tiny_model_dir), "cpu", cache_dir=cache_dir)


@pytest.fixture
def tiny_vocabulary(tiny_model_dir):
    from easy_diffuser.vocabulary import load_vocabulary

    return load_vocabulary([tiny_model_dir / "vocabulary"])


def cached_file(loaded, vocabulary, cache_dir) -> Path:
    from easy_diffuser import label_cache

    return label_cache.cache_path(cache_dir, loaded.cache_key, vocabulary)


# Not /dev/full: run as root, safetensors' save_file replaces the device node with a regular file.
@pytest.mark.parametrize("failure", ["SafetensorError", "OSError"])
def test_a_cache_that_cannot_be_written_costs_nothing_but_speed(
    tiny_loaded, tiny_vocabulary, cache_dir, monkeypatch, caplog, failure
):
    import safetensors.torch
    from safetensors import SafetensorError

    from easy_diffuser import label_cache

    expected = label_cache.text_embeddings(tiny_loaded, tiny_vocabulary, cache_dir / "good")

    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a fil")  # what a full disk leaves behind
        raise (
            SafetensorError("No space left on device") if failure == "SafetensorError" else OSError(28, "No space left")
        )

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with caplog.at_level("WARNING"):
        embeddings = label_cache.text_embeddings(tiny_loaded, tiny_vocabulary, cache_dir)
    assert torch.equal(embeddings, expected)
    assert any("cannot write text-embedding cache" in record.getMessage() for record in caplog.records)
    folder = cache_dir / "text_embeddings"
    assert not folder.exists() or list(folder.iterdir()) == []  # no half-written file, no temp file


def damaged_embeddings(good: torch.Tensor, damage: str) -> torch.Tensor:
    rows, width = good.shape
    return (
        {
            "too narrow": good[:, : width // 2].contiguous(),
            "too wide": torch.cat([good, good], dim=1),
            "one row short": good[:-1].contiguous(),
            "1-D": good.flatten().contiguous(),
            "3-D": good.unsqueeze(0).contiguous(),
            "integer": (good * 100).to(torch.int16),
            "all zero": torch.zeros_like(good),
            "not unit length": good * 2,
            "a NaN": torch.where(torch.arange(rows * width).view(rows, width) == 5, float("nan"), good),
            "an infinity": torch.where(torch.arange(rows * width).view(rows, width) == 5, float("inf"), good),
            "empty": torch.zeros((0, width)),
        }[damage].half()
        if damage != "integer"
        else (good * 100).to(torch.int16)
    )


@pytest.mark.parametrize(
    "damage",
    [
        "too narrow",
        "too wide",
        "one row short",
        "1-D",
        "3-D",
        "integer",
        "all zero",
        "not unit length",
        "a NaN",
        "an infinity",
        "empty",
    ],
)
def test_a_cache_of_the_wrong_shape_or_values_is_rebuilt(
    tiny_loaded, tiny_vocabulary, cache_dir, tiny_model_dir, damage
):
    from safetensors.torch import load_file, save_file

    from easy_diffuser import label_cache
    from easy_diffuser.engine import Engine

    good = label_cache.text_embeddings(tiny_loaded, tiny_vocabulary, cache_dir)
    path = cached_file(tiny_loaded, tiny_vocabulary, cache_dir)
    metadata = {"fingerprint": tiny_vocabulary.fingerprint, "tags": str(len(tiny_vocabulary))}
    save_file({"embeddings": damaged_embeddings(good, damage)}, str(path), metadata)
    assert torch.equal(label_cache.text_embeddings(tiny_loaded, tiny_vocabulary, cache_dir), good)
    assert torch.equal(load_file(str(path))["embeddings"].float(), good)  # rewritten whole
    save_file({"embeddings": damaged_embeddings(good, damage)}, str(path), metadata)
    engine = Engine(str(tiny_model_dir), cache_dir=cache_dir)  # and the whole pipeline works, no matmul error
    assert torch.equal(engine.scorer.text_embeddings, good)
