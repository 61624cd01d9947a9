"""Learning tau by the round trip: extract -> generate -> compare.

metric.py       tag probabilities, BCE between source and generated image, image cosine
generators.py   prompt -> image: the shapes renderer, a webui over HTTP, or in-process
sweep.py        every setting (tau, negatives) measured over the images, resumable
report.py       the table, the loss plot and the grid
run.py          calibrate(): sweep a folder, pick the best, write report and result
cli.py          `easy-diffuser calibrate FOLDER ...`
shapes_proof.py the shapes-world proof that calibration beats the alternatives
"""

from .run import calibrate, load_folder
from .sweep import DEFAULT_NEGATIVES, DEFAULT_TAUS, Calibration, Row, Setting

__all__ = ["DEFAULT_NEGATIVES", "DEFAULT_TAUS", "Calibration", "Row", "Setting", "calibrate", "load_folder"]
