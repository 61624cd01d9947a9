"""The extension's section of the webui's Settings page: every setting once (key, default, label, component).

The host registers them as `easy_diffuser_<key>` (WebuiHost.add_settings); the tab and the handlers read
them back from the host's opts. Ranges come from the options schema, as the tab's own sliders do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import gradio as gr

from ..captioner import CAPTIONERS, memory_note
from ..describe_server import API_KEY_VARIABLE, ServerDescriber, api_key_from_environment, server_describer
from ..errors import ModelError
from ..options import CAPTION_OPTIONS, DEFAULT_CAPTIONER, OPTION, SERVER_OPTIONS, Option, OptionError, ServerOptions
from ..registry import list_models
from .http_api import DEFAULT_MAX_REQUEST_MB
from .service import AUTO

SECTION = ("easy_diffuser", "Easy Diffuser")


@dataclass(frozen=True)
class Setting:
    key: str  # the webui's name for it is easy_diffuser_<key>
    default: Any
    label: str
    component: Any = None  # a gradio component class; None: the webui's default for the type
    args: Optional[dict] = None
    # The webui's own editable dropdown: gradio 3's Dropdown.update() rejects allow_custom_value, and the
    # webui calls update(**args) for every setting at page load, so that argument breaks the whole Settings page.
    editable_dropdown: bool = False


def slider_args(option: Option) -> dict[str, float]:
    return {"minimum": option.minimum, "maximum": option.maximum, "step": option.step}


def _control(option: Option) -> tuple[Any, dict]:
    """A choice (JoyCaption's mode and length) as a dropdown, a number as a slider over its range."""
    return (gr.Dropdown, {"choices": list(option.choices)}) if option.choices else (gr.Slider, slider_args(option))


def definitions(forced_model: Optional[str]) -> list[Setting]:
    """`forced_model`: the --easy-diffuser-model flag, which the model setting's label then names."""
    return [
        Setting(
            "model", AUTO, _model_label(forced_model), args={"choices": [AUTO, *list_models()]}, editable_dropdown=True
        ),
        Setting(
            "keep_in_vram",
            False,
            "Keep the CLIP model in VRAM between uses (faster, but the VRAM stays taken during generation)",
        ),
        Setting("extract_on_drop", True, "Extract as soon as an image is dropped"),
        *(
            Setting(name, OPTION[name].default, label, gr.Slider, slider_args(OPTION[name]))
            for name, label in (
                ("max_tags", "Default number of tags"),
                ("quality_negatives", "Default number of standard quality negatives"),
            )
        ),
        Setting("weights", OPTION["weights"].default, "Weights on by default"),
        Setting(
            "caption",
            False,
            "Caption the image before the tags (BLIP, GIT, Qwen2-VL or JoyCaption; needs transformers, which the "
            "webui has)",
        ),
        Setting(
            "caption_model",
            DEFAULT_CAPTIONER,
            f"Captioner ({memory_note()})",
            gr.Dropdown,
            {"choices": list(CAPTIONERS)},
        ),
        *(
            Setting(f"caption_{option.name}", option.default, option.label, *_control(option))
            for option in CAPTION_OPTIONS
        ),
        *(
            Setting(
                f"caption_{option.name}",
                option.default,
                option.label,
                *((gr.Slider, slider_args(option)) if option.minimum is not None else (gr.Textbox, {})),
            )
            for option in SERVER_OPTIONS
        ),
        Setting(
            "caption_api_key",
            "",
            f"VLM server API key, if it wants one (sent to that server only, never shown; else {API_KEY_VARIABLE})",
            gr.Textbox,
            {"type": "password"},
        ),
        Setting("round_trip_save", False, "Save the images Check and Refine generate to the txt2img outputs folder"),
        Setting(
            "max_request_mb",
            DEFAULT_MAX_REQUEST_MB,
            "Largest HTTP request to /easy-diffuser/v1 (MB); larger ones get 413",
            gr.Slider,
            {"minimum": 1, "maximum": 500, "step": 1},
        ),
    ]


def _model_label(forced: Optional[str]) -> str:
    """What the model setting means, and when the command line overrides it: the Settings page says so."""
    if forced:
        return f"CLIP model: {forced} is in force, set by --easy-diffuser-model (this setting is ignored)"
    return "CLIP model (Auto: ViT-H-14 for SD 2.x checkpoints, else ViT-L-14/openai)"


def describer(opts: Any) -> Optional[ServerDescriber]:
    """The VLM server the Settings name (None: no URL, nothing is sent); ModelError for a value it can't take."""
    try:
        server = ServerOptions(
            **{option.name: getattr(opts, f"easy_diffuser_caption_{option.name}") for option in SERVER_OPTIONS}
        )
    except OptionError as error:
        raise ModelError(f"Settings > Easy Diffuser: {error}") from None
    key = str(getattr(opts, "easy_diffuser_caption_api_key", "") or "").strip()
    return server_describer(server, key or api_key_from_environment())
