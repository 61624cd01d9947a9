"""The `easy-diffuser` command: `easy-diffuser dataset ...` goes to dataset/cli.py without importing torch (its
reports and edits need none: it starts in 0.2 s, not 4 s); every other command is cli.py's."""

from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["dataset"]:  # `easy-diffuser dataset FOLDER --report DIR | edits | --undo`
        from .dataset.cli import main as dataset_main

        return dataset_main(args[1:])
    from .cli import main as cli_main

    return cli_main(args)
