"""The command line's exit codes, one definition for every subcommand (docs/cli.md's table)."""

EXIT_IMAGE_FAILED = 1  # some images or generations failed; the rest were done
EXIT_SETUP_FAILED = 2  # nothing could start: the model, a missing package, a refused or locked output
