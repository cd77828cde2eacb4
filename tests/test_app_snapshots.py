"""Snapshot tests of the app at a fixed terminal size: the main screen after a scripted day run, the training
panel after a fake training, and the failure review. Content is deterministic: no tmp paths or clock times
reach the screen (the sandbox path in rustc's messages is shown as main.rs; the adapter id is fixed here)."""

from __future__ import annotations

import pytest

from sleepy_tui.training import adapters
from test_app import FakeTrainer, add_correction, broken, fix, make_app, settle

SIZE = (100, 32)


def ran_day(*keys: str):
    async def run_before(pilot) -> None:
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)
        pilot.app.clear_notifications()
        await pilot.pause()
    return run_before


@pytest.fixture
def day_app(koan_dir, _isolated_state):
    app, _ = make_app(koan_dir, _isolated_state, [fix("bc_901"), broken("bc_902"), broken("bc_902")])
    return app


def test_main_screen_after_a_day_run(snap_compare, day_app):
    assert snap_compare(day_app, terminal_size=SIZE, run_before=ran_day())


def test_failure_review(snap_compare, day_app):
    assert snap_compare(day_app, terminal_size=SIZE, run_before=ran_day("r"))


def test_training_panel_after_training(snap_compare, koan_dir, _isolated_state, monkeypatch):
    monkeypatch.setattr(adapters, "new_adapter_id", lambda cycle: f"c{cycle:03d}-snapshot")
    app, _ = make_app(koan_dir, _isolated_state, [], trainer=FakeTrainer())
    add_correction(app, "bc_901")

    async def run_before(pilot) -> None:
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)
        pilot.app.clear_notifications()
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_model_picker(snap_compare, koan_dir, _isolated_state, monkeypatch, tmp_path):
    from test_app import _no_local_models
    from test_bad_input import closed_port_url
    _no_local_models(monkeypatch, tmp_path)     # the Qwen models absent, SmolLM2 in its package: same everywhere
    app, _ = make_app(koan_dir, _isolated_state, [], ollama_host=closed_port_url())

    async def run_before(pilot) -> None:
        await settle(pilot)
        await pilot.press("m")
        await settle(pilot)
        await pilot.press("down")
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
