"""The recipe cache with a toy recipe: keys, checksums at use, builds that fail or are killed,
two processes at once, export to a mirror and back, where the cache lives, and the CLI."""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest

import recipes.__main__ as cli
from recipes import Entry, Recipe, RecipeCache, RecipeError, default_root
from recipes.cache import MANIFEST

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = {"bin/tool": b"#!/bin/sh\necho toy\n", "images/toy.tar": b"not really a tar" * 100}
# Spawned children import this module afresh: nothing inherited but their arguments.
SPAWN = multiprocessing.get_context("spawn")


def toy_build(
    outdir: Path,
    log: Callable[[str], None],
    *,
    counter: Path | None = None,
    started: Path | None = None,
    wait_for: tuple[str, ...] = (),
    sleep: float = 0.0,
    fail: BaseException | None = None,
    outputs: dict[str, bytes] | None = None,
) -> None:
    if counter is not None:
        with counter.open("a") as handle:
            handle.write(f"{os.getpid()}\n")
    for relpath, data in (OUTPUTS if outputs is None else outputs).items():
        (outdir / relpath).parent.mkdir(parents=True, exist_ok=True)
        (outdir / relpath).write_bytes(data)
        log(f"wrote {relpath}")
    if started is not None:
        started.touch()
    deadline = time.monotonic() + 30
    while not all(Path(path).exists() for path in wait_for) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(sleep)
    if fail is not None:
        raise fail


def toy(
    inputs: dict[str, str] | None = None, *, revision: str = "1", version: str = "1.0.0", **options: object
) -> Recipe:
    return Recipe(
        name="toy",
        version=version,
        revision=revision,
        inputs={"Containerfile": "FROM scratch\n", "source": "toy 1.0.0-1"} if inputs is None else inputs,
        build=functools.partial(toy_build, **options),  # type: ignore[arg-type]
    )


def builds(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def leftovers(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir() if path.name.startswith(".tmp-"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_miss_builds_and_a_hit_reuses_with_every_output_recorded(tmp_path: Path) -> None:
    cache = RecipeCache(tmp_path / "cache")
    counter = tmp_path / "builds"
    lines: list[str] = []
    recipe = toy(counter=counter)
    built = cache.ensure(recipe, log=lines.append)
    assert built.origin == "build" and builds(counter) == 1
    assert built.path == tmp_path / "cache" / f"toy-1.0.0-{recipe.key}" == cache.entry_dir(recipe)
    assert "wrote bin/tool" in lines and any("built in" in line for line in lines)
    manifest = json.loads((built.path / MANIFEST).read_text())
    assert manifest["key"] == recipe.key and manifest["revision"] == "1"
    assert manifest["inputs"] == {"Containerfile": sha(b"FROM scratch\n"), "source": sha(b"toy 1.0.0-1")}
    assert manifest["files"] == {
        relpath: {"sha256": sha(data), "size": len(data)} for relpath, data in OUTPUTS.items()
    }
    assert manifest["build_seconds"] >= 0 and manifest["build_host"] and manifest["built_at"]
    assert built.files() == sorted(OUTPUTS)
    assert built.file("bin/tool").read_bytes() == OUTPUTS["bin/tool"]
    assert built.manifest.files["images/toy.tar"].size == len(OUTPUTS["images/toy.tar"])
    hit = cache.ensure(recipe)
    assert hit.origin == "cache" and builds(counter) == 1
    assert hit.manifest == built.manifest
    assert leftovers(cache.root) == []
    with pytest.raises(RecipeError, match=r"no output 'bin/other'; it has: bin/tool, images/toy.tar"):
        hit.file("bin/other")


def test_the_key_follows_name_version_revision_and_inputs_only() -> None:
    base = toy()
    assert len(base.key) == 16 and base.entry_name == f"toy-1.0.0-{base.key}"
    # The order of the inputs does not matter, nor how the recipe builds.
    assert toy({"source": "toy 1.0.0-1", "Containerfile": "FROM scratch\n"}, sleep=1.0).key == base.key
    changed = [
        toy({"Containerfile": "FROM debian\n", "source": "toy 1.0.0-1"}),
        toy({"Containerfile": "FROM scratch\n"}),
        toy(revision="2"),
        toy(version="1.0.1"),
        # Not confused by how inputs are joined.
        toy({"Containerfile": "FROM scratch\n", "source": "toy 1.0.0-", "x": "1"}),
    ]
    assert len({recipe.key for recipe in [base, *changed]}) == len(changed) + 1
    with pytest.raises(ValueError, match="letters, digits"):
        Recipe("../evil", "1", "1", {}, build=toy_build)


def test_a_changed_input_builds_a_new_entry(tmp_path: Path) -> None:
    cache = RecipeCache(tmp_path)
    counter = tmp_path / "builds"
    first = cache.ensure(toy(counter=counter))
    second = cache.ensure(toy({"Containerfile": "FROM debian\n"}, counter=counter))
    assert builds(counter) == 2 and first.path != second.path
    assert sorted(path.name for path in cache.entry_dirs()) == sorted([first.name, second.name])


def test_a_corrupted_output_is_named_at_use_and_never_silently_rebuilt(tmp_path: Path) -> None:
    cache = RecipeCache(tmp_path / "cache")
    counter = tmp_path / "builds"
    entry = cache.ensure(toy(counter=counter))
    tool = entry.file("bin/tool")
    tool.write_bytes(b"#!/bin/sh\necho tampered\n")
    actual = sha(b"#!/bin/sh\necho tampered\n")
    with pytest.raises(RecipeError) as raised:
        entry.file("bin/tool")
    message = str(raised.value)
    assert "bin/tool" in message and sha(OUTPUTS["bin/tool"]) in message and actual in message
    assert "python -m recipes rebuild toy" in message and str(entry.path) in message
    # The other output is still usable; checking it does not need the corrupted one.
    assert entry.file("images/toy.tar").read_bytes() == OUTPUTS["images/toy.tar"]
    with pytest.raises(RecipeError, match=r"(?s)bin/tool: expected sha256 .*python -m recipes rebuild toy"):
        cache.ensure(toy(counter=counter))
    assert builds(counter) == 1
    # A missing file and a stray one are reported by verify() too.
    (entry.files_dir / "images" / "toy.tar").unlink()
    (entry.files_dir / "stray").write_text("x")
    with pytest.raises(RecipeError) as raised:
        entry.verify()
    assert "images/toy.tar: expected sha256" in str(raised.value) and "actual: missing" in str(raised.value)
    assert "stray: not in the manifest" in str(raised.value)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"fail": RuntimeError("podman build failed")}, RuntimeError),
        ({"fail": KeyboardInterrupt()}, KeyboardInterrupt),
        ({"outputs": {}}, RecipeError),
    ],
    ids=["exception", "interrupt", "empty-output"],
)
def test_a_failed_build_leaves_no_entry_and_no_temporary_directory(
    tmp_path: Path, options: dict[str, object], error: type[BaseException]
) -> None:
    cache = RecipeCache(tmp_path)
    recipe = toy(**options)
    with pytest.raises(error):
        cache.ensure(recipe)
    assert not cache.entry_dir(recipe).exists() and cache.lookup(recipe) is None
    assert leftovers(tmp_path) == []
    if error is RecipeError:
        with pytest.raises(RecipeError, match="built nothing"):
            cache.ensure(recipe)


def test_a_symlink_in_the_output_is_refused(tmp_path: Path) -> None:
    def build(outdir: Path, log: Callable[[str], None]) -> None:
        (outdir / "real").write_text("x")
        (outdir / "link").symlink_to("real")

    recipe = Recipe("toy", "1.0.0", "1", {}, build=build)
    cache = RecipeCache(tmp_path)
    with pytest.raises(RecipeError, match="output link is not a regular file"):
        cache.ensure(recipe)
    assert cache.entry_dirs() == [] and leftovers(tmp_path) == []


def _ensure_in_child(root: str, results: str, index: int, options: dict[str, object]) -> None:
    Path(results, f"arrived-{index}").touch()
    entry = RecipeCache(Path(root)).ensure(toy(**options))
    Path(results, f"origin-{index}").write_text(entry.origin)


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_a_build_killed_midway_leaves_no_entry_and_the_next_one_builds_cleanly(tmp_path: Path) -> None:
    root, counter, started = tmp_path / "cache", tmp_path / "builds", tmp_path / "started"
    options = {"counter": counter, "started": started, "sleep": 60.0}
    child = SPAWN.Process(target=_ensure_in_child, args=(str(root), str(tmp_path), 0, options))
    child.start()
    try:
        _wait_for(started)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    recipe = toy(counter=counter)
    assert not RecipeCache(root).entry_dir(recipe).exists()
    # The killed build's half-written directory is still there ...
    assert len(leftovers(root)) == 1
    lines: list[str] = []
    entry = RecipeCache(root).ensure(recipe, log=lines.append)
    # ... until the next process holding the lock removes it and builds.
    assert entry.origin == "build" and builds(counter) == 2
    assert leftovers(root) == []
    assert any("left by an interrupted build" in line for line in lines)
    entry.verify()


def test_two_processes_at_once_build_once(tmp_path: Path) -> None:
    root, counter = tmp_path / "cache", tmp_path / "builds"
    # The build goes on until both processes have called ensure(), so the second one
    # really waits on the lock while the first builds.
    options = {"counter": counter, "wait_for": (str(tmp_path / "arrived-0"), str(tmp_path / "arrived-1"))}
    options["sleep"] = 0.5
    children = [
        SPAWN.Process(target=_ensure_in_child, args=(str(root), str(tmp_path), index, options))
        for index in (0, 1)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(90)
    assert [child.exitcode for child in children] == [0, 0]
    assert builds(counter) == 1
    origins = sorted((tmp_path / f"origin-{index}").read_text() for index in (0, 1))
    assert origins == ["build", "cache"]
    assert leftovers(root) == []


def test_two_threads_of_one_process_build_once(tmp_path: Path) -> None:
    """The controller without xdist: a background thread builds while a test asks for it."""
    counter = tmp_path / "builds"
    arrived = [tmp_path / "arrived-0", tmp_path / "arrived-1"]
    recipe = toy(counter=counter, wait_for=tuple(map(str, arrived)), sleep=0.3)
    origins: list[str] = []

    def ask(index: int) -> None:
        arrived[index].touch()
        origins.append(RecipeCache(tmp_path / "cache").ensure(recipe).origin)

    threads = [threading.Thread(target=ask, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(origins) == ["build", "cache"] and builds(counter) == 1


def test_export_then_a_mirror_fills_an_empty_cache_without_building(tmp_path: Path) -> None:
    counter = tmp_path / "builds"
    built = RecipeCache(tmp_path / "machine-a").ensure(toy(counter=counter))
    mirror = tmp_path / "usb"
    exported = RecipeCache(tmp_path / "machine-a").export(toy(), mirror)
    assert exported == mirror / "recipes" / built.name
    assert Entry.load(exported).manifest == built.manifest
    assert sorted(path.name for path in (mirror / "recipes").iterdir()) == [built.name]
    # Exporting again keeps the valid copy.
    assert RecipeCache(tmp_path / "machine-a").export(built, mirror) == exported
    # On another machine, a build would fail: the mirror is used instead.
    offline = toy(counter=counter, fail=RuntimeError("no network"))
    lines: list[str] = []
    copied = RecipeCache(tmp_path / "machine-b").ensure(offline, mirror=mirror, log=lines.append)
    assert copied.origin == "mirror" and builds(counter) == 1
    assert copied.path == tmp_path / "machine-b" / built.name
    assert copied.manifest == built.manifest
    assert copied.file("bin/tool").read_bytes() == OUTPUTS["bin/tool"]
    assert any("copying from the mirror" in line for line in lines)
    assert RecipeCache(tmp_path / "machine-b").ensure(offline, mirror=mirror).origin == "cache"
    # A mirror without the entry: built (here: the build fails, and nothing is left).
    with pytest.raises(RuntimeError, match="no network"):
        RecipeCache(tmp_path / "machine-c").ensure(offline, mirror=tmp_path / "empty")
    assert not (tmp_path / "machine-c" / built.name).exists()


def test_a_corrupted_mirror_copy_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    cache = RecipeCache(tmp_path / "a")
    entry = cache.ensure(toy())
    mirror = tmp_path / "mirror"
    exported = cache.export(entry, mirror)
    (exported / "files" / "bin" / "tool").write_text("tampered")
    target = RecipeCache(tmp_path / "b")
    refused = r"(?s)the mirror's copy .* differs.*bin/tool: expected sha256.*export it again"
    with pytest.raises(RecipeError, match=refused):
        target.ensure(toy(), mirror=mirror)
    assert target.entry_dirs() == [] and leftovers(target.root) == []
    # Exporting replaces an invalid copy in the mirror.
    cache.export(entry, mirror)
    assert target.ensure(toy(), mirror=mirror).origin == "mirror"


def test_export_of_a_recipe_never_built_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="Fix: python -m recipes build toy"):
        RecipeCache(tmp_path / "cache").export(toy(), tmp_path / "mirror")


def test_the_default_root_is_outside_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HVSUITE_RECIPE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_root() == tmp_path / "home" / ".cache" / "hvsuite" / "recipes"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert RecipeCache().root == tmp_path / "xdg" / "hvsuite" / "recipes"
    # A relative XDG_CACHE_HOME is ignored (XDG base directory specification).
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert default_root() == tmp_path / "home" / ".cache" / "hvsuite" / "recipes"
    monkeypatch.setenv("HVSUITE_RECIPE_CACHE", str(tmp_path / "explicit"))
    assert RecipeCache().root == tmp_path / "explicit"
    monkeypatch.delenv("HVSUITE_RECIPE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(Path.home()))
    assert not default_root().is_relative_to(REPO)


def test_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    counter = tmp_path / "builds"
    made: list[object] = []

    def factory(settings: object) -> Recipe:
        made.append(settings)
        return toy(counter=counter)

    module = types.ModuleType("toy_recipes")
    module.recipe = factory  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "toy_recipes", module)
    monkeypatch.setattr(cli, "KNOWN", {"toy": "toy_recipes:recipe", "broken": "no_such_module:recipe"})
    monkeypatch.setenv("HVSUITE_RECIPE_CACHE", str(tmp_path / "cache"))

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("build", "toy")
    assert code == 0 and out.startswith("build: ") and "wrote bin/tool" in err
    assert type(made[0]).__name__ == "Settings"
    assert run("build", "toy")[1].startswith("cache: ")
    code, out, _ = run("list")
    entry_name = toy().entry_name
    assert code == 0 and entry_name in out and " valid " in out
    code, out, _ = run("verify", "toy")
    assert code == 0 and out.startswith("valid: ")
    code, out, _ = run("export", "toy", str(tmp_path / "mirror"))
    assert code == 0 and (tmp_path / "mirror" / "recipes" / entry_name / MANIFEST).is_file()
    (tmp_path / "cache" / entry_name / "files" / "bin" / "tool").write_text("tampered")
    code, _, err = run("verify", "toy")
    assert code == 1 and "bin/tool: expected sha256" in err and "python -m recipes rebuild toy" in err
    code, out, _ = run("list")
    assert " corrupt " in out and "bin/tool" in out
    code, out, _ = run("rebuild", "toy")
    assert code == 0 and out.startswith("build: ") and builds(counter) == 2
    assert run("verify", "toy")[0] == 0
    code, _, err = run("build", "broken")
    assert code == 1 and "cannot load its factory no_such_module:recipe" in err
    code, _, err = run("--cache", str(tmp_path / "other"), "verify", "toy")
    assert code == 1 and "not in the cache" in err and "python -m recipes build toy" in err
