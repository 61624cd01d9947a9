"""Stand-in for modules/script_callbacks.py: the registration functions and the callers the host uses."""

from __future__ import annotations

from typing import Any, Callable

callback_map: dict[str, list[Callable]] = {"ui_tabs": [], "ui_settings": [], "app_started": [], "script_unloaded": []}


def clear_callbacks() -> None:
    for callbacks in callback_map.values():
        callbacks.clear()


def on_ui_tabs(callback, *, name=None):
    callback_map["ui_tabs"].append(callback)


def on_ui_settings(callback, *, name=None):
    callback_map["ui_settings"].append(callback)


def on_app_started(callback, *, name=None):
    callback_map["app_started"].append(callback)


def on_script_unloaded(callback, *, name=None):
    callback_map["script_unloaded"].append(callback)


def ui_tabs_callback() -> list:
    return [tab for callback in callback_map["ui_tabs"] for tab in (callback() or [])]


def ui_settings_callback() -> None:
    for callback in callback_map["ui_settings"]:
        callback()


def app_started_callback(demo: Any, app: Any) -> None:
    for callback in callback_map["app_started"]:
        callback(demo, app)


def script_unloaded_callback() -> None:
    for callback in callback_map["script_unloaded"]:
        callback()
