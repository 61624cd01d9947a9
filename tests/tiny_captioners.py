"""Tiny captioners with random weights, built here in the real formats (no weights can be downloaded).

Each model is built from a small config of its real class, saved with save_pretrained (safetensors)
next to a processor made from a tokenizer over a local vocabulary, so it loads through the real
`load_captioner(folder)` path. Used by tests/test_captioner.py and bench/bench_captioner.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers

# Whole words only: a decoded caption then re-tokenizes to as many tokens as were generated.
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
WORDS = "a woman man dog cat sitting standing on in the park bench street red blue photo of with".split()
SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
VISION = dict(image_size=32, patch_size=8, **SMALL)


def _tokenizer(folder: Path) -> "transformers.BertTokenizer":
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS) + "\n")
    return transformers.BertTokenizer(str(vocab), bos_token="[DEC]")  # BLIP's start token; special, so never decoded


def _ids(*tokens: str) -> list[int]:
    return [SPECIALS.index(token) for token in tokens]


def build_blip(folder: Path) -> Path:
    pad, sep, dec = _ids("[PAD]", "[SEP]", "[DEC]")
    text = dict(
        vocab_size=len(SPECIALS + WORDS),
        max_position_embeddings=64,
        bos_token_id=dec,
        sep_token_id=sep,
        eos_token_id=sep,
        pad_token_id=pad,
        **SMALL,
    )
    model = transformers.BlipForConditionalGeneration(
        transformers.BlipConfig(text_config=text, vision_config=VISION, projection_dim=32)
    )
    image_processor = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    processor = transformers.BlipProcessor(image_processor, _tokenizer(folder))
    return _save(model, processor, folder)


def build_git(folder: Path) -> Path:
    pad, cls, sep = _ids("[PAD]", "[CLS]", "[SEP]")
    config = transformers.GitConfig(
        vision_config=VISION,
        vocab_size=len(SPECIALS + WORDS),
        max_position_embeddings=64,
        bos_token_id=cls,
        eos_token_id=sep,
        pad_token_id=pad,
        **SMALL,
    )
    model = transformers.GitForCausalLM(config)
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return _save(model, transformers.GitProcessor(image_processor, _tokenizer(folder)), folder)


def _save(model, processor, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)  # the default only from transformers 4.35 on
    processor.save_pretrained(folder)
    return folder


# Qwen2-VL: a byte-level BPE tokenizer over the 256 byte characters (no merges) plus Qwen's special
# tokens, the chat template's shape, and a model of one layer each side at hidden size 32.
QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen2_vl(folder: Path) -> Path:
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({char: i for i, char in enumerate(bytes_to_unicode().values())}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.Qwen2Tokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:]})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIALS}
    config = transformers.Qwen2VLConfig(
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14),
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        rope_scaling={"type": "mrope", "mrope_section": [4, 2, 2]},  # halves of the head size 16
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    model = transformers.Qwen2VLForConditionalGeneration(config)
    image_processor = transformers.Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56)  # 4 visual tokens
    processor = transformers.Qwen2VLProcessor(image_processor, tokenizer, chat_template=QWEN_TEMPLATE)
    return _save(model, processor, folder)


# JoyCaption Beta One: LLaVA over a SigLIP tower and a Llama decoder, with Llama 3's tokenizer.json (byte-level
# BPE; here over the 256 byte characters without merges), its special tokens and header-style chat template,
# which writes the image token at the start of the first user turn and leaves <|begin_of_text|> to the tokenizer
# (the model card: its processor() adds exactly one), and the processor_config.json keys of the hub repository
# (`num_additional_image_tokens`, read from transformers 4.47 on).
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
IMAGE_TOKEN = "<image>"
LLAMA_TEMPLATE = (
    "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['role'] == 'user' and loop.index0 == 1 %}<image>{% endif %}"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
JOY_VISION = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
JOY_IMAGE_TOKENS = (32 // 8) ** 2  # a SigLIP tower: one feature per patch, no class token


def llama3_tokenizer(folder: Path) -> "transformers.PreTrainedTokenizerFast":
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    bpe = Tokenizer(models.BPE(vocab, [], ignore_merges=True))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([*LLAMA_SPECIALS, IMAGE_TOKEN])
    bos = bpe.token_to_id("<|begin_of_text|>")
    # Llama 3's tokenizer.json starts every text with <|begin_of_text|>, as this one does.
    bpe.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|end_of_text|>"
    )


def build_joycaption(folder: Path) -> Path:
    tokenizer = llama3_tokenizer(folder)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in [*LLAMA_SPECIALS, IMAGE_TOKEN]}
    config = transformers.LlavaConfig(
        vision_config=transformers.SiglipVisionConfig(intermediate_size=37, **JOY_VISION).to_dict(),
        text_config=transformers.LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=256,
            bos_token_id=ids["<|begin_of_text|>"],
            eos_token_id=ids["<|eot_id|>"],
            pad_token_id=ids["<|end_of_text|>"],
        ).to_dict(),
        image_token_index=ids[IMAGE_TOKEN],
        vision_feature_select_strategy="full",
        vision_feature_layer=-2,
        image_seq_length=JOY_IMAGE_TOKENS,
        pad_token_id=ids["<|end_of_text|>"],
    )
    model = transformers.LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|eot_id|>"]
    image_processor = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    processor = transformers.LlavaProcessor(image_processor, tokenizer, chat_template=LLAMA_TEMPLATE)
    _save(model, processor, folder)
    settings = folder / "processor_config.json"
    written = json.loads(settings.read_text()) if settings.exists() else {"processor_class": "LlavaProcessor"}
    written.update(patch_size=8, vision_feature_select_strategy="full", num_additional_image_tokens=0)
    settings.write_text(json.dumps(written, indent=2))
    return folder
