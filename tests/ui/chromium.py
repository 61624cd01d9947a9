"""The browser the UI tests, the screenshots and the real-host check drive: Debian's Chromium, headless, kept off
the network this machine closes (its background connections are refused, many at a time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch(playwright: Any) -> Any:
    """A headless Chromium from a sync_playwright() context."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
