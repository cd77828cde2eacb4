"""Every key is described once (app/keys.py) and the bindings, palette, tooltips and help all read it."""

from __future__ import annotations

from sleepy_tui.app import keys
from sleepy_tui.app.app import SleepyApp
from sleepy_tui.app.screens.correction_screen import CorrectionScreen
from sleepy_tui.app.screens.help_screen import HelpScreen
from sleepy_tui.app.screens.koan_history_screen import KoanHistoryScreen
from sleepy_tui.app.screens.main_screen import MainScreen
from sleepy_tui.app.screens.model_screen import ModelScreen
from sleepy_tui.app.screens.review_screen import ReviewScreen

SCREENS = {"main": MainScreen, "review": ReviewScreen, "fix editor": CorrectionScreen, "help": HelpScreen,
           "koan history": KoanHistoryScreen, "model picker": ModelScreen, "anywhere": SleepyApp}


def test_every_screen_binds_exactly_its_keys_and_has_their_actions():
    for where, screen in SCREENS.items():
        bound = {(b.key, b.action) for b in screen.BINDINGS}
        assert bound == {(k.key, k.action) for k in keys.KEYS if k.where == where and k.action}, where
        for b in screen.BINDINGS:
            name = b.action.split("(")[0]
            assert callable(getattr(screen, f"action_{name}", None)), f"{where}: no action_{name}"
            assert b.tooltip and b.description, (where, b.key)


def test_the_palette_the_tooltips_and_the_help_say_the_same():
    main = dict((action, help_) for _, help_, action in MainScreen.PALETTE)
    assert main["train"] == keys.tooltip("main", "train") == \
        "Build a dataset of verified fixes and train a new adapter (t)"
    table = keys.help_table()
    for k in keys.KEYS:
        assert f"| `{k.shown_key}` | {k.where} | {k.description} |" in table
    # a key used in two places means two things there, never one key twice in one place
    seen = [(k.where, k.key) for k in keys.KEYS]
    assert len(seen) == len(set(seen))
