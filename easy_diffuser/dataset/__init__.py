"""A LoRA training dataset's captions: the tag report (report.py) and bulk edits with undo (edits.py, journal.py).

`easy-diffuser dataset FOLDER ...` (cli.py) and the tab's Dataset panel (webui/dataset_panel.py) are over these.
"""

from .captions import DatasetError
from .edits import Edit, EditSummary, edit_folder
from .journal import JournalError, UndoSummary, undo
from .report import Report, build_report, write_report

__all__ = [
    "DatasetError",
    "Edit",
    "EditSummary",
    "JournalError",
    "Report",
    "UndoSummary",
    "build_report",
    "edit_folder",
    "undo",
    "write_report",
]
