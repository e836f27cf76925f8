"""The suite's plugins: the engine (plan, ordering, run modes, signals, timeline, Allure) and
the targets (config, inventory, SSH, waivers, change counts)."""

pytest_plugins = ["engine.plugin", "targets.plugin"]
