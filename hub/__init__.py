"""tunehub application layer: settings, CLI, app factory, OpenAI-compatible API, UI. The only package that knows HTTP."""
