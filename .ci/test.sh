#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine (idempotent), then run them all:
# the core suite, then the webui tab in a real browser under gradio 3.41.2 (A1111) and 4.40 (Forge).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# torch first and pinned: any newer release would be a multi-GB download. open-clip-torch 2.20.0
# is the version the webui pins, so that is what the core is tested with.
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q open-clip-torch==2.20.0 transformers==4.46.1 -e '.[test,caption,report,ray]'

if ! command -v chromium >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
bash .ci/setup-ui-venvs.sh

status=0
.venv/bin/python -m pytest -q -p no:cacheprovider tests --ignore=tests/ui || status=1
for venv in .venv-gradio3 .venv-gradio4; do
    echo "== webui tab tests with $($venv/bin/python -c 'import gradio; print("gradio", gradio.__version__)')"
    $venv/bin/python -m pytest -q -p no:cacheprovider tests/ui || status=1
done
exit $status
