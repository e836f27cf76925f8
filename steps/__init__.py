"""The teams' own places: one package per team of the plan (``steps/<team>/``) holding its
config section (``settings.py``), its component steps, its templates, and the extension
points it offers later teams (``hookspecs.py``) or contributes to (``hooks.py``). Steps are
pytest-free, built on `apply`; the phases/ modules apply them and prove the outcome."""
