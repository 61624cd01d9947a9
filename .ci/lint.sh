#!/usr/bin/env bash
# Lint and format check with the ruff pinned in pyproject.toml's `test` extra (config: [tool.ruff] there).
# To fix what it finds: ruff check --fix $PATHS && ruff format $PATHS
set -euo pipefail
cd "$(dirname "$0")/.."

RUFF=${RUFF:-.venv/bin/ruff}
if ! [ -x "$RUFF" ]; then
    echo "lint: $RUFF not found; install the test extra (.venv/bin/pip install -e '.[test]') or set RUFF=path/to/ruff" >&2
    exit 2
fi
PATHS=(easy_diffuser scripts tests bench install.py preload.py)

status=0
"$RUFF" check --quiet --output-format concise "${PATHS[@]}" || status=1
"$RUFF" format --check --quiet --output-format concise "${PATHS[@]}" || status=1
if [ $status -ne 0 ]; then
    echo "lint failed; fix with: $RUFF check --fix ${PATHS[*]} && $RUFF format ${PATHS[*]}" >&2
fi
exit $status
