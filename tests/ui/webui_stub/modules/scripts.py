"""Stand-in for modules/scripts.py: the runner of the extensions' scripts, as processing reads it (no scripts)."""


class ScriptRunner:
    def __init__(self) -> None:
        self.scripts: list = []
        self.alwayson_scripts: list = []
        self.selectable_scripts: list = []
