"""Stand-in for modules/paths.py; the tests point models_path at a temporary folder."""

models_path = "models"
