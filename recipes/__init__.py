"""Artifacts no registry ships, built by a *recipe* on the controller and cached on the machine.

    recipe = Recipe(name, version, revision, inputs={"Containerfile": text, ...}, build=fn)
        # fn(outdir: Path, log: Callable[[str], None]) writes the outputs into an empty directory
    recipe.key         # sha256 over name, version, revision and the sorted inputs (16 hex digits)
    recipe.entry_name  # "<name>-<version>-<key>"

    cache = RecipeCache()            # $HVSUITE_RECIPE_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/hvsuite/recipes
    entry = cache.ensure(recipe, mirror=artifacts_dir, log=print)   # cached, mirrored, or built once
    entry.file("bin/kubeadm")        # the path, after checking its sha256 against the manifest
    entry.files() / entry.verify() / entry.manifest / entry.origin ("cache", "mirror", "build")
    cache.export(recipe_or_entry, mirror_dir)   # -> <mirror_dir>/recipes/<entry_name>/

The cache lives outside the repository clone: CI clones afresh each run, and a machine keeps
what it built across clones. See `recipes.cache` for how entries stay whole, and
``python -m recipes --help`` for the command line (list, build, rebuild, export, verify).
"""

from __future__ import annotations

from recipes.cache import (
    Entry,
    FileRecord,
    Manifest,
    Recipe,
    RecipeCache,
    RecipeError,
    default_root,
)

__all__ = [
    "Entry",
    "FileRecord",
    "Manifest",
    "Recipe",
    "RecipeCache",
    "RecipeError",
    "default_root",
]
