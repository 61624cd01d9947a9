"""JoyCaption Beta One's instructions, and its prompt as token ids.

JoyCaption (`fancyfeast/llama-joycaption-beta-one-hf-llava`: SigLIP so400m, a projector, Llama 3.1 8B) is a
transformers LlavaForConditionalGeneration trained on a fixed set of instructions: a *mode* (a detailed
description, a Stable Diffusion prompt, a Danbooru tag list, ...) at a *length* (a word such as "long", or
"N words or less"). The texts below are those of its official app (github.com/fpgaminer/joycaption,
gradio-app/app.py, CAPTION_TYPE_MAP); the model answers best to exactly these.

Its processor puts one image token per visual feature in the prompt. How many it writes differs by version:
transformers 4.47 added `num_additional_image_tokens`, and 4.46 (Forge's pin) counts one more than a SigLIP
tower gives (it assumes CLIP's class token), which the model then refuses. So the prompt is expanded here, to
the count the loaded vision tower itself has, and the processor only tokenizes and resizes: the same ids on
every transformers from 4.46 on.
"""

from __future__ import annotations

from typing import Any, Sequence

# What the system turn says: the model card's example.
SYSTEM = "You are a helpful image captioner."
DANBOORU = (
    "Generate only comma-separated Danbooru tags (lowercase_underscores). Strict order: `artist:`, `copyright:`, "
    "`character:`, `meta:`, then general tags. Include counts (1girl), appearance, clothing, accessories, pose, "
    "expression, actions, background. Use precise Danbooru syntax. No extra text."
)
# mode -> (at any length, within {word_count} words, at a {length}); the keys are the option's choices.
MODES: dict[str, tuple[str, str, str]] = {
    "descriptive": (
        "Write a detailed description for this image.",
        "Write a detailed description for this image in {word_count} words or less.",
        "Write a {length} detailed description for this image.",
    ),
    "casual": (
        "Write a descriptive caption for this image in a casual tone.",
        "Write a descriptive caption for this image in a casual tone within {word_count} words.",
        "Write a {length} descriptive caption for this image in a casual tone.",
    ),
    "stable-diffusion": (
        "Output a stable diffusion prompt that is indistinguishable from a real stable diffusion prompt.",
        "Output a stable diffusion prompt that is indistinguishable from a real stable diffusion prompt. "
        "{word_count} words or less.",
        "Output a {length} stable diffusion prompt that is indistinguishable from a real stable diffusion prompt.",
    ),
    "midjourney": (
        "Write a MidJourney prompt for this image.",
        "Write a MidJourney prompt for this image within {word_count} words.",
        "Write a {length} MidJourney prompt for this image.",
    ),
    "danbooru": (DANBOORU, f"{DANBOORU} {{word_count}} words or less.", f"{DANBOORU} {{length}} length."),
    "booru-like": (
        "Write a list of Booru-like tags for this image.",
        "Write a list of Booru-like tags for this image within {word_count} words.",
        "Write a {length} list of Booru-like tags for this image.",
    ),
}
# "any" leaves the length to the model; the words and the word counts are the app's choices.
LENGTHS = ("any", "very short", "short", "medium-length", "long", "very long", *map(str, range(20, 261, 10)))
DEFAULT_MODE, DEFAULT_LENGTH = "descriptive", "long"  # the app's defaults


def instruction(mode: str = DEFAULT_MODE, length: str = DEFAULT_LENGTH) -> str:
    """The user turn JoyCaption was trained on for `mode` at `length` (both checked by the options schema)."""
    anything, words, worded = MODES[mode]
    if length == "any":
        return anything
    return (words if length.isdigit() else worded).format(word_count=length, length=length)


def conversation(text: str) -> list[dict[str, str]]:
    """The chat the model card builds: the image token is the chat template's to place, not the text's."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def image_token_count(model: Any) -> int:
    """Visual features the model puts in place of its image token: the vision tower's positions (a SigLIP
    tower has one per patch; a CLIP tower one more, its class token), less the class token that the
    "default" feature strategy drops."""
    positions = model.vision_tower.vision_model.embeddings.num_positions
    return positions - (model.config.vision_feature_select_strategy == "default")


def expand_image_tokens(ids: Sequence[int], image_token: int, count: int) -> list[int]:
    """The prompt's ids with each image token written `count` times, as transformers 4.47's processor does."""
    return [expanded for token in ids for expanded in ([token] * count if token == image_token else [token])]
