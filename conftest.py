"""The suite's plugins: the engine (plan, ordering, signals, timeline, Allure) and the
targets (config, scratch servers, SSH, waivers, apply modes)."""

pytest_plugins = ["engine.plugin", "targets.plugin"]
