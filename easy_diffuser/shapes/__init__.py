"""A tiny procedural "shapes world" and a tiny CLIP trained on it (test fixture)."""
