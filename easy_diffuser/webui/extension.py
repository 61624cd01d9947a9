"""The extension as the webui's script callbacks see it: one model service shared by the tab and the routes.

scripts/easy_diffuser_tab.py makes one `Extension` over a `WebuiHost` each time the webui loads it
(startup, Reload UI) and registers these methods with modules.script_callbacks.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Optional

import gradio as gr

from .. import torch_versions
from . import http_api, settings, tab
from .handlers import Handlers
from .service import Service

if TYPE_CHECKING:  # the host imports the webui: only the script makes one
    from .host import WebuiHost


class Extension:
    def __init__(self, host: WebuiHost) -> None:
        mismatch = torch_versions.mismatch()  # the webui may start regardless; our first model load would not
        if mismatch:
            print(f"Easy Diffuser: {mismatch}", file=sys.stderr)
        self.host = host
        self.service = Service(
            host.resolve_model,
            host.weights_folder,
            host.placement,
            host.queued,
            host.checkpoint,
            lambda: settings.describer(host.opts),  # read at every use: Settings may change it at any time
        )
        self.handlers = Handlers(host, self.service)

    def on_ui_settings(self) -> None:
        self.host.add_settings(settings.definitions(self.host.cmd_opts.easy_diffuser_model))

    def on_ui_tabs(self) -> list[tuple[gr.Blocks, str, str]]:
        return [(tab.build_tab(self.host, self.handlers), "Easy Diffuser", "easy_diffuser")]

    def on_app_started(self, demo: Optional[gr.Blocks], app: Any) -> None:
        host = self.host
        if demo is None or host.cmd_opts.api:  # demo is None under --nowebui, which serves the API alone
            http_api.add_routes(
                app,
                self.service,
                host.model_choices,
                host.configured_model,
                host.cmd_opts.api_auth,
                lambda: host.opts.easy_diffuser_max_request_mb,
                self.handlers.generating,
            )

    def on_script_unloaded(self) -> None:
        self.service.unload()
        self.host.torch_gc()
