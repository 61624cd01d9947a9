"""Trimmed text encoding is exact, and the embedding cache is fast, keyed and self-healing."""

from __future__ import annotations

import pytest
import torch

from easy_diffuser import label_cache
from easy_diffuser.embedding import encode_texts
from easy_diffuser.errors import ModelFileError
from easy_diffuser.models import load_model
from easy_diffuser.vocabulary import load_vocabulary

TEXTS = [
    "red",
    "a photo of a circle",
    "highly detailed oil painting of a cat on a windowsill at dusk",
    "x " * 40,
    "star",
]


@pytest.fixture
def tiny(tiny_model_dir, cache_dir):
    return load_model(str(tiny_model_dir), "cpu", cache_dir=cache_dir)


def test_trimmed_encoding_equals_77_token_encoding(tiny):
    trimmed = encode_texts(tiny, TEXTS * 3, batch_size=4, trim=True)
    padded = encode_texts(tiny, TEXTS * 3, batch_size=4, trim=False)
    assert trimmed.shape == (15, 64)
    assert (trimmed - padded).abs().max() < 1e-5


def test_trimmed_encoding_equals_open_clip_on_vit_b_32():
    """The real architecture family (ViT text tower, 12 layers), random weights."""
    from easy_diffuser.kinds.clip_loading import LoadedClip, open_clip_module

    open_clip = open_clip_module()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    loaded = LoadedClip(
        "ViT-B-32-random", model.eval(), preprocess, open_clip.get_tokenizer("ViT-B-32"), {}, None, "random"
    )
    reference = torch.nn.functional.normalize(model.encode_text(open_clip.tokenize(TEXTS)), dim=-1)
    assert (encode_texts(loaded, TEXTS, trim=True) - reference).abs().max() < 1e-5


def test_results_keep_input_order(tiny):
    one_by_one = torch.cat([encode_texts(tiny, [text]) for text in TEXTS])
    assert (encode_texts(tiny, TEXTS, batch_size=2) - one_by_one).abs().max() < 1e-5


def vocabulary(folder):
    return load_vocabulary([folder / "vocabulary"])


def test_cache_is_built_once_then_loaded(tiny, tiny_model_dir, cache_dir, monkeypatch):
    vocab = vocabulary(tiny_model_dir)
    first = label_cache.text_embeddings(tiny, vocab, cache_dir)
    assert label_cache.cache_path(cache_dir, tiny.cache_key, vocab).is_file()
    monkeypatch.setattr(label_cache, "encode_texts", lambda *a, **k: pytest.fail("cache was not used"))
    assert torch.equal(label_cache.text_embeddings(tiny, vocab, cache_dir), first)


def test_cache_is_rebuilt_when_labels_change(tiny, tiny_model_dir, cache_dir, tmp_path):
    label_cache.text_embeddings(tiny, vocabulary(tiny_model_dir), cache_dir)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "mood.txt").write_text("serene\n")
    changed = load_vocabulary([tiny_model_dir / "vocabulary", extra])
    embeddings = label_cache.text_embeddings(tiny, changed, cache_dir)
    assert embeddings.shape[0] == len(changed) == len(vocabulary(tiny_model_dir)) + 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_cache_is_rebuilt_not_trusted(tiny, tiny_model_dir, cache_dir, damage):
    vocab = vocabulary(tiny_model_dir)
    good = label_cache.text_embeddings(tiny, vocab, cache_dir)
    path = label_cache.cache_path(cache_dir, tiny.cache_key, vocab)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * len(data), "empty": b""}[damage])
    assert torch.equal(label_cache.text_embeddings(tiny, vocab, cache_dir), good)
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(path))["embeddings"].float(), good)  # rewritten whole


def test_cache_write_leaves_no_temp_files(tiny, tiny_model_dir, cache_dir):
    label_cache.text_embeddings(tiny, vocabulary(tiny_model_dir), cache_dir)
    assert [p.name for p in (cache_dir / "text_embeddings").iterdir() if p.name.startswith(".")] == []


def test_new_weights_under_the_same_name_get_new_embeddings(tmp_path, cache_dir):
    """A model folder (or shapes-demo after an update) keeps its name but not its cached tag embeddings."""
    from easy_diffuser.models import unload_models

    from conftest import write_model_folder

    folder = write_model_folder(tmp_path / "my-clip", seed=0)
    vocab = vocabulary(folder)
    before = label_cache.text_embeddings(load_model(str(folder), cache_dir=cache_dir), vocab, cache_dir)
    write_model_folder(folder, seed=1)
    unload_models()
    after = label_cache.text_embeddings(load_model(str(folder), cache_dir=cache_dir), vocab, cache_dir)
    assert not torch.allclose(before, after)


def rewrite_cache(path, embeddings: torch.Tensor, **metadata: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        written = handle.metadata()
    assert set(written) >= {"fingerprint", "digest"} and load_file(str(path))["embeddings"].dtype == torch.float16
    save_file({"embeddings": embeddings.half().contiguous()}, str(path), {**written, **metadata})


@pytest.mark.parametrize("change", ["one value", "another model's rows", "no digest"])
def test_a_cache_whose_rows_do_not_match_their_digest_is_rebuilt(tiny, tiny_model_dir, cache_dir, caplog, change):
    """Damage that leaves the file well-formed (right shape, finite unit rows) is caught by the digest."""
    vocab = vocabulary(tiny_model_dir)
    good = label_cache.text_embeddings(tiny, vocab, cache_dir)
    path = label_cache.cache_path(cache_dir, tiny.cache_key, vocab)
    if change == "one value":
        flipped = good.clone()
        flipped[3, 7] = -flipped[3, 7]  # still unit length, still finite
        rewrite_cache(path, flipped)
    elif change == "another model's rows":
        rewrite_cache(path, torch.nn.functional.normalize(torch.randn_like(good), dim=-1))
    else:
        rewrite_cache(path, good, digest="")
    with caplog.at_level("WARNING"):
        assert torch.equal(label_cache.text_embeddings(tiny, vocab, cache_dir), good)
    assert any("rebuilding text-embedding cache" in record.getMessage() for record in caplog.records)
    caplog.clear()
    assert torch.equal(label_cache.text_embeddings(tiny, vocab, cache_dir), good)  # the rebuilt file is trusted
    assert not caplog.records


def test_non_finite_rows_are_refused_even_with_a_matching_digest(tiny, tiny_model_dir, cache_dir):
    vocab = vocabulary(tiny_model_dir)
    good = label_cache.text_embeddings(tiny, vocab, cache_dir)
    path = label_cache.cache_path(cache_dir, tiny.cache_key, vocab)
    poisoned = good.clone().half()
    poisoned[0, 0] = float("nan")
    rewrite_cache(path, poisoned, digest=label_cache._digest(poisoned.numpy()))
    assert torch.equal(label_cache.text_embeddings(tiny, vocab, cache_dir), good)


def test_non_finite_rows_refuse_the_model_and_are_never_written(tiny, tiny_model_dir, cache_dir, monkeypatch):
    """A text tower with NaN weights: every image's scores would be NaN, so the model is refused in one line."""
    vocab = vocabulary(tiny_model_dir)
    monkeypatch.setattr(label_cache, "encode_texts", lambda *a, **k: torch.full((len(vocab), 64), float("nan")))
    with pytest.raises(ModelFileError, match=r"gave non-finite tag embeddings: its weights may be damaged \(NaN/inf\)"):
        label_cache.text_embeddings(tiny, vocab, cache_dir)
    assert not label_cache.cache_path(cache_dir, tiny.cache_key, vocab).exists()


def test_rows_a_model_gets_wrong_are_never_written(tiny, tiny_model_dir, cache_dir, monkeypatch, caplog):
    vocab = vocabulary(tiny_model_dir)
    monkeypatch.setattr(label_cache, "encode_texts", lambda *a, **k: torch.full((len(vocab), 64), 2.0))
    with caplog.at_level("WARNING"):
        label_cache.text_embeddings(tiny, vocab, cache_dir)
    assert not label_cache.cache_path(cache_dir, tiny.cache_key, vocab).exists()
    assert any("not unit length" in record.getMessage() for record in caplog.records)
