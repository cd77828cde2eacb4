"""checkpoint.py: the last checkpoints stay whole, older ones keep only their adapter (the validation slice
chooses among them) and are no longer complete, so nothing resumes from them."""

from sleepy_tui.training import checkpoint

REQUIRED = ("trainer_state.pt", "adapter_model.safetensors")


def fill(tmp):
    for name in ("adapter_config.json", "adapter_model.safetensors", "loss.jsonl", "trainer_state.pt"):
        (tmp / name).write_text(name)
    (tmp / "extra").mkdir()
    (tmp / "extra" / "x").write_text("x")


def test_older_checkpoints_keep_their_adapter_only(tmp_path):
    for step in (8, 16, 24, 32):
        checkpoint.save(tmp_path, step, fill, REQUIRED, keep=2)
    assert [s for s, _ in checkpoint.complete(tmp_path, REQUIRED)] == [24, 32]
    assert [s for s, _ in checkpoint.saved_adapters(tmp_path)] == [8, 16, 24, 32]
    old = checkpoint.folder(tmp_path, 8)
    assert sorted(p.name for p in old.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (checkpoint.folder(tmp_path, 32) / "trainer_state.pt").is_file()


def test_a_folder_without_adapter_weights_is_no_candidate(tmp_path):
    checkpoint.save(tmp_path, 4, fill, REQUIRED)
    (checkpoint.folder(tmp_path, 4) / "adapter_model.safetensors").unlink()
    (tmp_path / "checkpoints" / "step-notanumber").mkdir()
    assert checkpoint.saved_adapters(tmp_path) == []
