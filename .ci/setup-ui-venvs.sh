#!/usr/bin/env bash
# Make .venv-gradio3 (A1111 1.10's web stack) and .venv-gradio4 (Forge's) for the UI tests.
#
# Each holds only the host's gradio/fastapi/pydantic pins and the playwright package (it drives
# Debian's /usr/bin/chromium; no browser is downloaded). torch and open_clip come from .venv
# through a .pth file appended to sys.path, so the venv's own packages win and torch is
# installed once. Idempotent: a venv that already has its pins is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_VENV=.venv
BASE_SITE=$("$BASE_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BASE_PYTHON=$("$BASE_VENV/bin/python" -c 'import sys; print(sys._base_executable)')
PLAYWRIGHT=playwright==1.65.2

make_venv() {
    local dir=$1
    shift
    local pins="$* $PLAYWRIGHT"
    [ -x "$dir/bin/python" ] || "$BASE_PYTHON" -m venv "$dir"
    local site
    site=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    realpath "$BASE_SITE" > "$site/easy_diffuser_base_venv.pth"
    # The marker records the pins of the last complete install; other pins mean install again.
    if [ "$(cat "$dir/.easy-diffuser-pins" 2>/dev/null)" != "$pins" ]; then
        # shellcheck disable=SC2086  # the pins are words
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check $pins
        echo "$pins" > "$dir/.easy-diffuser-pins"
    fi
    "$dir/bin/python" -W ignore -c 'import gradio, torch, open_clip, pytest, playwright; print(gradio.__version__, "with torch", torch.__version__)'
}

# A1111 1.10 pins (requirements_versions.txt): gradio 3.41.2, fastapi 0.94.0, pydantic 1, httpx 0.24.1.
make_venv .venv-gradio3 gradio==3.41.2 fastapi==0.94.0 pydantic==1.10.15 httpx==0.24.1 huggingface-hub==0.26.2 Pillow==9.5.0 numpy==1.26.2
# Forge pins (requirements_versions.txt): gradio 4.40.0, fastapi 0.104.1, pydantic 2.8.2, huggingface-hub 0.26.2.
make_venv .venv-gradio4 gradio==4.40.0 fastapi==0.104.1 pydantic==2.8.2 httpx==0.24.1 huggingface-hub==0.26.2 Pillow==9.5.0 numpy==1.26.2
