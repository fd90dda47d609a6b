"""Plain, frozen configuration data: model presets and speedrun tracks."""
