#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine (idempotent), then run them all: lint, the
# core suite with the webui's open-clip-torch 2.20.0 and the model tests with the newest one, then
# the webui tab in a real browser under gradio 3.41.2 (A1111) and 4.40 (Forge).
# Needs root (or passwordless sudo) only to apt-get install Chromium when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then  # what tests/ui/test_browser.py drives
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "error: the UI tests need /usr/bin/chromium, and installing it needs root:" \
            "run 'sudo apt-get install chromium' (Debian) once, then this script again" >&2
        exit 1
    fi
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# torch first and pinned: any newer release would be a multi-GB download. open-clip-torch 2.20.0
# is the version the webui pins, so .venv holds it (it replaces a newer one from `pip install -e .`);
# the newest open_clip is tested in .venv-open-clip3 (setup-ui-venvs.sh).
echo "== setup: .venv (torch, open-clip-torch 2.20.0, the test, caption, report and ray extras)"
installed=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("open-clip-torch"))' 2>/dev/null || true)
if [ -n "$installed" ] && [ "$installed" != 2.20.0 ]; then
    echo "note: .venv's open-clip-torch $installed becomes 2.20.0 (the webui's pin); the newest is tested in .venv-open-clip3"
fi
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q open-clip-torch==2.20.0 transformers==4.46.1 -e '.[test,caption,report,ray]'

echo "== setup: the venvs with other hosts' pins (.ci/setup-ui-venvs.sh)"
bash .ci/setup-ui-venvs.sh

status=0
echo "== lint (ruff)"
bash .ci/lint.sh || status=1

echo "== core tests with open_clip $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("open-clip-torch"))')"
.venv/bin/python -m pytest -q -p no:cacheprovider tests --ignore=tests/ui || status=1
echo "== model tests with open_clip $(.venv-open-clip3/bin/python -c 'import importlib.metadata as m; print(m.version("open-clip-torch"))')"
.venv-open-clip3/bin/python -m pytest -q -p no:cacheprovider \
    tests/test_models.py tests/test_embedding_cache.py tests/test_semantics.py || status=1
echo "== WD tagger tests with timm $(.venv-timm095/bin/python -c 'import importlib.metadata as m; print(m.version("timm"))')"
.venv-timm095/bin/python -m pytest -q -p no:cacheprovider tests/test_tagger.py tests/test_tagger_folder_safety.py tests/test_booru.py tests/test_shapes_booru.py tests/test_pixai.py tests/test_jtp.py || status=1
echo "== JoyCaption tests with transformers $(.venv-transformers448/bin/python -c 'import importlib.metadata as m; print(m.version("transformers"))')"
.venv-transformers448/bin/python -m pytest -q -p no:cacheprovider tests/test_joycaption.py || status=1
for venv in .venv-gradio3 .venv-gradio4; do
    echo "== webui tab tests with $($venv/bin/python -c 'import gradio; print("gradio", gradio.__version__)')"
    $venv/bin/python -m pytest -q -p no:cacheprovider tests/ui || status=1
done
exit $status
