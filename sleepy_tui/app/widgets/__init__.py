"""Widgets of the app, one class per file."""
