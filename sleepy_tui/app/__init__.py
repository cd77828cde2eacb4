"""The Textual app: a thin driver of the engine. `sleepy` with no arguments opens it (see main.run_app)."""
