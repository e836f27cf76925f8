"""The suite's plugins: the engine (plan, ordering, signals, timeline, Allure) and the
targets (config, scratch servers, SSH, waivers, apply modes)."""

# The engine after the targets plugin: it then tolerates a targets plugin that still
# defines --check/--verify-only itself (the engine owns them; see engine.plugin).
pytest_plugins = ["targets.plugin", "engine.plugin"]
