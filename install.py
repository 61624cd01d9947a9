"""Run by the webui at every launch: install open-clip-torch if (and only if) it is missing.

The webui pins torch, gradio and transformers for itself; a constraints file holding their
installed versions makes sure this install can never upgrade, downgrade or replace them.
"""

import importlib.metadata
import os
import tempfile

import launch

OPEN_CLIP = "open-clip-torch==2.20.0"  # the version A1111 1.10 and Forge pin themselves
PROTECTED = ("torch", "torchvision", "gradio", "transformers")


def installed_pins() -> list:
    pins = []
    for name in PROTECTED:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return pins


def main() -> None:
    if launch.is_installed("open_clip"):
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\n".join(installed_pins()) + "\n")
    try:
        launch.run_pip(f'install "{OPEN_CLIP}" -c "{constraints.name}"', "open-clip-torch for Easy Diffuser")
    finally:
        os.unlink(constraints.name)


main()
