"""Easy Diffuser tab for AUTOMATIC1111's webui and Forge: registers the extension's callbacks.

The tab, its handlers, the settings and the HTTP routes live in easy_diffuser.webui; the host's rules
(settings, flags, device and memory, the queue lock) in easy_diffuser.webui.host, the one module that
imports the webui. Each load of this script (startup, Reload UI) starts a fresh extension.
"""

from modules import script_callbacks

from easy_diffuser.webui.extension import Extension
from easy_diffuser.webui.host import WebuiHost

extension = Extension(WebuiHost())

script_callbacks.on_ui_settings(extension.on_ui_settings)
script_callbacks.on_ui_tabs(extension.on_ui_tabs)
script_callbacks.on_app_started(extension.on_app_started)
script_callbacks.on_script_unloaded(extension.on_script_unloaded)
