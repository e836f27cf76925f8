"""Build, check and carry recipe outputs by hand.

python -m recipes list                               # entries in the cache: size, build time, valid/corrupt
python -m recipes build NAME [--artifacts-dir DIR]   # cached, else copied from DIR/recipes/, else built
python -m recipes rebuild NAME                       # remove the entry and build it again
python -m recipes export NAME DIR                    # into DIR/recipes/ (built first if needed)
python -m recipes verify NAME                        # every file of the entry against its manifest

Global options: --config PATH (the suite config a recipe reads, default settings/scratch.toml),
--cache DIR (default $HVSUITE_RECIPE_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/hvsuite/recipes).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

from recipes.cache import Entry, Recipe, RecipeCache, RecipeError, human_size
from settings.loader import ConfigError, load_settings
from settings.model import Settings

# Recipe name -> "module:function"; the function takes the loaded Settings and returns the
# Recipe. Imported only when that recipe is asked for.
KNOWN: dict[str, str] = {"kubernetes": "recipes.kubernetes:recipe"}


def load_recipe(name: str, settings: Settings) -> Recipe:
    """The recipe `name` of `KNOWN`, made by its factory from `settings`."""
    try:
        target = KNOWN[name]
    except KeyError:
        raise RecipeError(f"unknown recipe {name!r}; known: {', '.join(sorted(KNOWN)) or 'none'}") from None
    module_name, _, function_name = target.partition(":")
    try:
        factory: Callable[[Settings], Recipe] = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"recipe {name!r}: cannot load its factory {target}: {exc}") from None
    recipe = factory(settings)
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"recipe {name!r}: {target} returned {type(recipe).__name__}, not a Recipe")
    return recipe


def _log_to_stderr() -> Callable[[str], None]:
    started = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {line}", file=sys.stderr, flush=True)

    return log


def _describe(entry: Entry) -> str:
    manifest = entry.manifest
    return (
        f"{entry.path} ({len(manifest.files)} file(s), {human_size(manifest.size)}, "
        f"built {manifest.built_at} on {manifest.build_host} in {manifest.build_seconds:.1f} s)"
    )


def _list(cache: RecipeCache) -> None:
    print(f"cache: {cache.root}")
    print(f"{'ENTRY':<48} {'SIZE':>10} {'BUILD (s)':>10} {'STATE':<8} BUILT")
    for path in cache.entry_dirs():
        try:
            entry = Entry.load(path)
        except RecipeError as exc:
            print(f"{path.name:<48} {'-':>10} {'-':>10} {'corrupt':<8} -")
            print(f"  {exc}")
            continue
        problems = entry.problems()
        manifest = entry.manifest
        state = "corrupt" if problems else "valid"
        size = human_size(manifest.size)
        print(f"{path.name:<48} {size:>10} {manifest.build_seconds:>10.1f} {state:<8} {manifest.built_at}")
        for problem in problems:
            print(f"  {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes",
        description="hvsuite recipe cache: artifacts built once on this machine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--config", default=None, help="suite config (default: settings/scratch.toml)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="the cache directory "
        "(default: $HVSUITE_RECIPE_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/hvsuite/recipes)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="entries in the cache, with size, build seconds and state")
    names = sorted(KNOWN)
    build = commands.add_parser("build", help="make sure the recipe's entry is in the cache")
    build.add_argument("name", choices=names)
    build.add_argument("--artifacts-dir", type=Path, default=None, help="an offline mirror to copy it from")
    rebuild = commands.add_parser("rebuild", help="remove the recipe's entry and build it again")
    rebuild.add_argument("name", choices=names)
    export = commands.add_parser("export", help="copy the recipe's entry into DIR/recipes/")
    export.add_argument("name", choices=names)
    export.add_argument("directory", metavar="DIR", type=Path)
    verify = commands.add_parser("verify", help="check every file of the recipe's entry")
    verify.add_argument("name", choices=names)
    args = parser.parse_args(argv)
    cache = RecipeCache(args.cache)
    log = _log_to_stderr()
    try:
        if args.command == "list":
            _list(cache)
            return 0
        recipe = load_recipe(args.name, load_settings(args.config))
        if args.command == "build":
            entry = cache.ensure(recipe, mirror=args.artifacts_dir, log=log)
            print(f"{entry.origin}: {_describe(entry)}")
        elif args.command == "rebuild":
            if cache.remove(recipe):
                log(f"{recipe.entry_name}: removed")
            entry = cache.ensure(recipe, log=log)
            print(f"{entry.origin}: {_describe(entry)}")
        elif args.command == "export":
            entry = cache.ensure(recipe, log=log)
            target = cache.export(entry, args.directory, log=log)
            print(f"exported: {target}")
        else:
            found = cache.lookup(recipe)
            if found is None:
                fix = f"Fix: python -m recipes build {args.name}"
                raise RecipeError(f"{recipe.entry_name} is not in the cache {cache.root}. {fix}")
            found.verify()
            print(f"valid: {_describe(found)}")
    except (ConfigError, RecipeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
