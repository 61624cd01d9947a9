#!/usr/bin/env bash
# Make the venvs that test against other hosts' pins, beside .venv (the webui's open-clip-torch 2.20.0):
#   .venv-gradio3     A1111 1.10's web stack, for the UI tests
#   .venv-gradio4     Forge's web stack, for the UI tests
#   .venv-open-clip3  the newest open-clip-torch (what a plain `pip install easy-diffuser` gets), for the core tests
#   .venv-timm095     timm 0.9.5 (sd-webui-controlnet forces it on the webui), for the WD tagger tests
#   .venv-transformers448  transformers 4.48 (whose LLaVA processor counts image tokens itself), for JoyCaption
#
# Each holds only its pins (the gradio venvs also the playwright package, which drives Debian's
# /usr/bin/chromium; no browser is downloaded). torch and everything else come from .venv through
# a .pth file appended to sys.path, so the venv's own packages win and torch is installed once.
# Idempotent: a venv that already has its pins is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_VENV=.venv
BASE_SITE=$("$BASE_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BASE_PYTHON=$("$BASE_VENV/bin/python" -c 'import sys; print(sys._base_executable)')
PLAYWRIGHT=playwright==1.65.2
OPEN_CLIP_NEWEST=open-clip-torch==3.3.0

make_venv() {
    local dir=$1
    shift
    local pins="$*"
    [ -x "$dir/bin/python" ] || "$BASE_PYTHON" -m venv "$dir"
    local site
    site=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    realpath "$BASE_SITE" > "$site/easy_diffuser_base_venv.pth"
    # The marker records the pins of the last complete install; other pins mean install again.
    if [ "$(cat "$dir/.easy-diffuser-pins" 2>/dev/null)" != "$pins" ]; then
        # Python 3.11's venv brings setuptools 65, which would hide .venv's; torch (seen through the
        # .pth) requires setuptools >= 77 and pip would report the mismatch as an error.
        if [ -d "$site/setuptools" ]; then
            "$dir/bin/python" -m pip uninstall --quiet --yes setuptools
        fi
        # --no-warn-conflicts: pip's check after the install also sees .venv's packages through the .pth,
        # and reports as ERROR lines those that need newer versions of what this venv pins (httpx2 and
        # httpcore2, left in .venv by a newer huggingface_hub, need anyio >= 4.10 and h11 >= 0.16; A1111's
        # httpx 0.24.1 needs older ones). The tests here import this venv's pins, which pip resolves
        # together (a conflict among them still fails the install); the import check below loads them.
        # shellcheck disable=SC2086  # the pins are words
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts $pins
        echo "$pins" > "$dir/.easy-diffuser-pins"
    fi
}

# A1111 1.10 pins (requirements_versions.txt): gradio 3.41.2, fastapi 0.94.0, pydantic 1, httpx 0.24.1.
make_venv .venv-gradio3 gradio==3.41.2 fastapi==0.94.0 pydantic==1.10.15 httpx==0.24.1 huggingface-hub==0.26.2 \
    Pillow==9.5.0 numpy==1.26.2 $PLAYWRIGHT
# Forge pins (requirements_versions.txt): gradio 4.40.0, fastapi 0.104.1, pydantic 2.8.2, huggingface-hub 0.26.2.
make_venv .venv-gradio4 gradio==4.40.0 fastapi==0.104.1 pydantic==2.8.2 httpx==0.24.1 huggingface-hub==0.26.2 \
    Pillow==9.5.0 numpy==1.26.2 $PLAYWRIGHT
make_venv .venv-open-clip3 $OPEN_CLIP_NEWEST
make_venv .venv-timm095 timm==0.9.5
make_venv .venv-transformers448 transformers==4.48.3

for venv in .venv-gradio3 .venv-gradio4; do
    "$venv/bin/python" -W ignore -c 'import gradio, torch, open_clip, pytest, playwright
print(gradio.__version__, "with torch", torch.__version__)'
done
.venv-open-clip3/bin/python -W ignore -c 'import open_clip, torch
print("open_clip", open_clip.__version__, "with torch", torch.__version__)'
.venv-timm095/bin/python -W ignore -c 'import timm, torch
print("timm", timm.__version__, "with torch", torch.__version__)'
.venv-transformers448/bin/python -W ignore -c 'import transformers, torch
print("transformers", transformers.__version__, "with torch", torch.__version__)'
