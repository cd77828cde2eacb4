"""Screens of the app, one class per file."""
