"""Stand-in for modules/ui_components.py: the editable dropdown the extension's settings use (same signature)."""

from functools import wraps

import gradio as gr


class FormComponent:
    webui_do_not_create_gradio_pyi_thank_you = True

    def get_expected_parent(self):
        return gr.components.Form


class DropdownEditable(gr.Dropdown, FormComponent):
    """Same as gr.Dropdown but allows editing value"""

    @wraps(gr.Dropdown.__init__)
    def __init__(self, **kwargs):
        kwargs["allow_custom_value"] = True
        super().__init__(**kwargs)

    def get_block_name(self):
        return "dropdown"
