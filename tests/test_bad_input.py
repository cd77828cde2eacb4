"""Bad input, through the CLI: each is one line naming the file or value and what to do, a non-zero exit (or a
skip with a warning line), never a traceback, and nothing already stored is lost.

Other bad-input cases live in test_cli.py, test_koans.py, test_model_output.py, test_store.py and
test_backends_ollama.py.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import pytest

from sleepy_tui import events as ev
from sleepy_tui.cli import main
from sleepy_tui.store import Store
from tests.conftest import mini_koan, write_koan


def cli(args, capsys) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as e:            # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error(err: str, *needles: str) -> str:
    """The single `error:` line of a failed command; it holds every needle."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error:" in line]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ---- koan files ---------------------------------------------------------------------------------------------------

def _listed(out: str) -> set[str]:
    return {line.split()[0] for line in out.splitlines() if line.startswith("bc_")}


@pytest.mark.parametrize("make, message", [
    (lambda root: (root / "borrow_checker" / "bc_950.toml").mkdir(), "bc_950.toml: cannot read: Is a directory"),
    (lambda root: (root / "borrow_checker" / "bc_950.toml").write_text(""), "bc_950.toml: missing field(s) id"),
    (lambda root: (root / "borrow_checker" / "bc_950.toml").write_bytes(mini_koan("bc_950").encode() + b"\xff"),
     "bc_950.toml: not valid UTF-8 (byte"),
    (lambda root: write_koan(root, "bc_901", family="trait_bounds", text=mini_koan("bc_901", "trait_bounds")),
     "trait_bounds/bc_901.toml: duplicate id 'bc_901' (also in"),
], ids=["directory", "empty", "invalid-utf8", "duplicate-id-across-families"])
def test_bad_koan_file_is_one_warning_and_the_rest_are_listed(koan_dir, capsys, make, message):
    make(koan_dir)
    code, out, err = cli(["koans", "list", "--koans", str(koan_dir)], capsys)
    assert code == 0 and "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and message in warnings[0], err
    assert _listed(out) == {"bc_900", "bc_901", "bc_902"} and "3 koans" in out


def test_broken_frozen_manifest_names_the_file(koan_dir, capsys):
    (koan_dir / "frozen_eval.toml").write_text("[[koans]\nid = ")
    code, _, err = cli(["koans", "list", "--koans", str(koan_dir)], capsys)
    assert code == 2
    one_error(err, "frozen_eval.toml: invalid TOML")


def test_koans_flag_naming_a_file(tmp_path, capsys):
    f = tmp_path / "koans.toml"
    f.write_text(mini_koan("bc_901"))
    code, _, err = cli(["koans", "list", "--koans", str(f)], capsys)
    assert code == 2
    one_error(err, f"{f}: no such koan folder")


# ---- numbers on the command line ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["run", "--count", "0"], "--count must be >= 1"),
    (["run", "--count", "-2"], "--count must be >= 1"),
    (["run", "--count", "three"], "argument --count: invalid int value: 'three'"),
    (["koans", "generate", "--count", "0"], "--count must be >= 1"),
    (["eval", "--cycle", "0", "--repeats", "0"], "--repeats must be >= 1"),
    (["eval", "--cycle", "0", "--repeats", "-1"], "--repeats must be >= 1"),
    (["eval", "--cycle", "0", "--repeats", "2x"], "argument --repeats: invalid int value: '2x'"),
    (["cycle", "--cycles", "0"], "--cycles must be >= 1"),
    (["run", "--max-attempts", "0"], "max_attempts: must be > 0, got 0"),
    (["run", "--max-attempts", "-3"], "max_attempts: must be > 0, got -3"),
    (["run", "--max-attempts", "many"], "argument --max-attempts: invalid int value: 'many'"),
    (["run", "--temperature", "-0.5"], "temperature: must be within 0..2, got -0.5"),
    (["run", "--temperature", "3"], "temperature: must be within 0..2, got 3.0"),
    (["run", "--temperature", "nan"], "temperature: must be within 0..2, got nan"),
    (["run", "--temperature", "warm"], "argument --temperature: invalid float value: 'warm'"),
    (["train", "--steps", "ten"], "argument --steps: invalid int value: 'ten'"),
    (["train", "--learning-rate", "0"], "learning_rate: must be > 0, got 0.0"),
    (["train", "--replay-share", "1.5"], "replay_share: must be within 0..1, got 1.5"),
])
def test_bad_number_is_one_line_and_exit_2(koan_dir, tmp_path, capsys, args, message):
    state = tmp_path / "state"
    code, out, err = cli(args + ["--koans", str(koan_dir), "--state", str(state)], capsys)
    assert code == 2 and out == ""
    one_error(err, message)
    assert not (state / "episodes").exists() or not list((state / "episodes").iterdir())   # nothing ran


# ---- settings files and environment -------------------------------------------------------------------------------

@pytest.mark.parametrize("toml, message", [
    ('max_attempts = "many"', "max_attempts: expected int, got 'many'"),
    ("temperature = [0.1, 0.2]", "temperature: expected float, got [0.1, 0.2]"),
    ("steps = true", "steps: expected int, got True"),
    ("memory_mb = 0", "memory_mb: must be > 0, got 0"),
    ("backend = 7", "backend: unknown '7'"),
    ("max_attempts = ", "invalid TOML"),
])
def test_config_toml_with_a_wrong_value_names_file_and_setting(_isolated_state, koan_dir, capsys, toml, message):
    cfg = _isolated_state / "config.toml"                 # state/config.toml of this test's state folder
    cfg.write_text(toml + "\n")
    code, _, err = cli(["koans", "list", "--koans", str(koan_dir)], capsys)
    assert code == 2
    line = one_error(err, message)
    assert str(cfg) in line or message.startswith(("backend", "memory_mb"))   # range problems name the setting


def test_config_toml_that_is_a_directory(_isolated_state, koan_dir, capsys):
    (_isolated_state / "config.toml").mkdir()
    code, _, err = cli(["koans", "list", "--koans", str(koan_dir)], capsys)
    assert code == 2
    one_error(err, "config.toml")


def test_config_toml_in_the_state_folder_given_by_flag_is_read(koan_dir, tmp_path, capsys):
    state = tmp_path / "mine"
    state.mkdir()
    (state / "config.toml").write_text('max_attempts = "many"\n')
    code, _, err = cli(["status", "--state", str(state)], capsys)
    assert code == 2
    one_error(err, "max_attempts: expected int, got 'many'")


@pytest.mark.parametrize("var, value, message", [
    ("SLEEPY_MAX_ATTEMPTS", "lots", "environment: max_attempts: expected int, got 'lots'"),
    ("SLEEPY_TEMPERATURE", "hot", "environment: temperature: expected float, got 'hot'"),
    ("SLEEPY_STEPS", "-5", "steps: must be > 0, got -5"),
    ("SLEEPY_BACKEND", "warp-drive", "backend: unknown 'warp-drive'"),
    ("SLEEPY_TARGET_MODULES", " , ", "target_modules: name at least one module"),
    ("SLEEPY_REPLAY_SHARE", "1e9", "replay_share: must be within 0..1"),
])
def test_garbage_in_sleepy_environment_variables(koan_dir, capsys, monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    code, _, err = cli(["koans", "list", "--koans", str(koan_dir)], capsys)
    assert code == 2
    one_error(err, message)


# ---- Ollama down or without the model, through `sleepy run` ---------------------------------------------------

def _run_ollama(koan_dir, state, capsys):
    code, out, err = cli(["run", "--backend", "ollama", "--koans", str(koan_dir), "--state", str(state),
                          "--count", "1"], capsys)
    runs = Store(state).runs()
    assert len(runs) == 1 and runs[0].status == "failed"       # the attempt is on record, state intact
    return code, err, runs[0]


@pytest.mark.parametrize("how", ["OLLAMA_HOST", "SLEEPY_OLLAMA_HOST"])
def test_ollama_down_says_ollama_serve(koan_dir, tmp_path, capsys, monkeypatch, how):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    url = closed_port_url()
    monkeypatch.setenv(how, url)
    code, err, run = _run_ollama(koan_dir, tmp_path / "state", capsys)
    assert code == 2
    one_error(err, f"Ollama is not running at {url}: start it with `ollama serve`")
    assert "ollama serve" in run.error


def test_ollama_without_the_model_says_ollama_pull(koan_dir, tmp_path, capsys, monkeypatch):
    from ollama_server import OllamaStub

    from sleepy_tui.backends.ollama_backend import DEFAULT_MODEL
    with OllamaStub(models=["llama3:8b"]) as server:
        monkeypatch.setenv("OLLAMA_HOST", server.url)
        code, err, _ = _run_ollama(koan_dir, tmp_path / "state", capsys)
    assert code == 2
    one_error(err, f"Ollama has no model {DEFAULT_MODEL}: run `ollama pull {DEFAULT_MODEL}`")


def test_fake_backend_with_a_garbage_replies_file(koan_dir, tmp_path, capsys):
    replies = tmp_path / "replies.json"
    replies.write_text("{not json")
    code, _, err = cli(["run", "--backend", "fake", "--model", str(replies), "--koans", str(koan_dir),
                        "--state", str(tmp_path / "state")], capsys)
    assert code == 2
    one_error(err, f"fake backend: --model must be a JSON list of replies ({replies}:")


# ---- damaged state ------------------------------------------------------------------------------------------------

def _state_with_history(state: Path) -> None:
    s = Store(state)
    s.add_episodes([{"run_id": "day-5", "koan_id": f"bc_90{i}", "attempt": 1, "outcome": "pass", "signature": None,
                     "split": "train", "family": "borrow_checker"} for i in range(4)])
    for i in range(6):
        s.save_run({"run_id": f"day-{i}", "kind": "day", "status": "done", "started": float(i)})
    s.close()


@pytest.mark.parametrize("damage", ["truncated", "garbage-line"])
@pytest.mark.parametrize("which", ["sleepy.json", "episodes/day-5.json"])
def test_damaged_state_file_then_status_recovers_and_keeps_a_backup(tmp_path, capsys, damage, which):
    state = tmp_path / "state"
    _state_with_history(state)
    path = state / which
    original = path.read_text()
    if damage == "truncated":
        damaged = original[: len(original) * 2 // 3]                 # a torn tail, mid-record
    else:
        lines = original.splitlines()
        victim = next(i for i, line in enumerate(lines) if '"day-2"' in line or '"bc_902"' in line)
        lines[victim] = "\x00\x00 hand edit {"                        # one record destroyed
        damaged = "\n".join(lines) + "\n"
    path.write_text(damaged)
    code, out, err = cli(["status", "--state", str(state)], capsys)
    assert code == 0 and "Traceback" not in err and "latest day run day-" in out
    backups = list(path.parent.glob(path.name + ".corrupt-*"))
    assert len(backups) == 1 and backups[0].read_text() == damaged   # the damaged original, kept beside it
    json.loads(path.read_text())                                    # rewritten whole
    warnings: list[str] = []
    again = Store(state, on_warning=warnings.append)
    assert warnings == []                                           # recovered once, for good
    if which == "sleepy.json":
        assert len(again.runs()) >= 3                                # every intact record kept
    else:
        assert 2 <= len(again.episodes("day-5")) <= 3


def test_status_says_it_recovered_a_damaged_state_file(tmp_path, capsys):
    state = tmp_path / "state"
    _state_with_history(state)
    path = state / "sleepy.json"
    path.write_text(path.read_text()[:200])
    code, _, err = cli(["status", "--state", str(state)], capsys)
    assert code == 0
    assert "warning:" in err and "sleepy.json: damaged; recovered" in err and ".corrupt-" in err


def test_state_flag_naming_a_file(tmp_path, capsys):
    f = tmp_path / "state"
    f.write_text("not a folder")
    code, _, err = cli(["status", "--state", str(f)], capsys)
    assert code == 2
    one_error(err, str(f))


# ---- no rustc ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["koans", "check"], ["verify", "{fix}", "--koan", "bc_901"],
                                  ["run", "--backend", "fake"]], ids=["koans-check", "verify", "run"])
def test_missing_rustc_is_one_line(koan_dir, tmp_path, capsys, monkeypatch, args):
    fix = tmp_path / "fix.rs"
    fix.write_text("pub fn f() {}\n")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    args = [a.replace("{fix}", str(fix)) for a in args]
    code, _, err = cli(args + ["--koans", str(koan_dir), "--state", str(tmp_path / "state")], capsys)
    assert code == 2
    one_error(err, "'rustc' not found on PATH: install Rust (https://rustup.rs)")


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: p.write_bytes(b"pub fn f() {}\xff\xfe\n")],
                         ids=["directory", "invalid-utf8"])
def test_verify_an_unreadable_file(koan_dir, tmp_path, capsys, make):
    p = tmp_path / "fix.rs"
    make(p)
    code, _, err = cli(["verify", str(p), "--koan", "bc_901", "--koans", str(koan_dir)], capsys)
    assert code == 2
    one_error(err, f"{p}: cannot read")


# ---- training ----------------------------------------------------------------------------------------------------

def test_train_with_no_episodes(koan_dir, tmp_path, capsys):
    code, _, err = cli(["train", "--koans", str(koan_dir), "--state", str(tmp_path / "state")], capsys)
    assert code == 2
    one_error(err, "no training examples: run a day first")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, pytestconfig):
    """(tiny random llama folder, 8-example chat dataset)."""
    from fixtures_training import build_tiny_llama, cached_tokenizer, write_dataset
    root = tmp_path_factory.mktemp("bad_input_tiny")
    model = build_tiny_llama(root / "model", cached_tokenizer(pytestconfig, root / "tokenizer"))
    return model, write_dataset(root / "train.jsonl")


def _config(model: Path, **kw):
    from sleepy_tui.training.base import TrainConfig
    return TrainConfig(**{**dict(base_model=str(model), steps=6, learning_rate=2e-2, warmup_steps=1, batch_size=2,
                                 checkpoint_every=2, seed=0), **kw})


def _full_disk_at_checkpoint(monkeypatch, step: int, where: str) -> None:
    """ENOSPC while checkpoint `step` is written: its rename, or the write of its state file."""
    import torch
    name = f"step-{step:06d}"
    if where == "rename":
        real = os.replace

        def replace(src, dst, *a, **k):
            if Path(dst).name == name:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
            return real(src, dst, *a, **k)
        monkeypatch.setattr(os, "replace", replace)
    else:
        real_save = torch.save

        def save(obj, f, *a, **k):
            if isinstance(obj, dict) and obj.get("step") == step:
                Path(f).write_bytes(b"\x80partial")                   # a torn file, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
            return real_save(obj, f, *a, **k)
        monkeypatch.setattr(torch, "save", save)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["rename", "write"])
def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tiny, tmp_path, monkeypatch, where):
    from safetensors.torch import load_file

    from sleepy_tui.training.torch_trainer import TorchTrainer, checkpoints
    model, data = tiny
    whole = TorchTrainer().train(data, _config(model), tmp_path / "whole", on_event=ev.ignore, resume=False)
    out = tmp_path / "run"
    _full_disk_at_checkpoint(monkeypatch, 4, where)
    events: list = []
    with pytest.raises(OSError) as e:
        TorchTrainer().train(data, _config(model), out, on_event=events.append, resume=False)
    assert e.value.errno == errno.ENOSPC
    assert isinstance(events[-1], ev.TrainError) and "No space left on device" in events[-1].message
    assert [x.step for x in events if isinstance(x, ev.CheckpointSaved)] == [2]
    monkeypatch.undo()
    # the previous checkpoint is intact, the failed one left nothing behind
    assert [s for s, _ in checkpoints(out)] == [2]
    assert not list((out / "checkpoints").glob(".tmp-*")) and not (out / "checkpoints" / "step-000004").exists()
    load_file(str(checkpoints(out)[0][1] / "adapter_model.safetensors"))
    # ... and usable: the resumed run ends like an unbroken one
    events = []
    last = TorchTrainer().train(data, _config(model), out, on_event=events.append, resume=True)
    started = next(x for x in events if isinstance(x, ev.TrainStarted))
    assert started.resumed_from == 2 and last.steps == 6
    assert last.losses == pytest.approx(whole.losses, rel=1e-5)
    a, b = load_file(str(out / "adapter" / "adapter_model.safetensors")), \
        load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    import torch
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def _seed_day(state: Path, koans: Path) -> None:
    from fixtures_training import PAIRS, SYSTEM
    s = Store(state)
    for i, (buggy, fixed) in enumerate(PAIRS):
        write_koan(koans, f"bc_{940 + i}")
        s.add_episode({"run_id": "day-1", "koan_id": f"bc_{940 + i}", "family": "borrow_checker", "split": "train",
                       "attempt": 1, "outcome": "pass", "signature": None, "code": fixed,
                       "prompt": [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": f"Fix this program:\n```rust\n{buggy}\n```"}]})
    s.close()


@pytest.mark.slow
def test_sleepy_train_on_a_full_disk_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    from sleepy_tui.training.base import TrainConfig
    state, koans = tmp_path / "state", tmp_path / "koans"
    _seed_day(state, koans)
    orig = TrainConfig.from_settings.__func__
    monkeypatch.setattr(TrainConfig, "from_settings",
                        classmethod(lambda cls, s, **o: orig(cls, s, **{"checkpoint_every": 2, **o})))
    _full_disk_at_checkpoint(monkeypatch, 4, "rename")
    code, _, err = cli(["train", "--backend", "transformers", "--model", str(tiny[0]), "--steps", "6",
                        "--koans", str(koans), "--state", str(state)], capsys)
    assert code == 2
    one_error(err, "No space left on device")
    assert "training failed: OSError" in err


def test_resume_when_the_last_training_finished(koan_dir, tmp_path, capsys, monkeypatch):
    from sleepy_tui.training import torch_trainer
    started = []

    def train(self, *a, **k):
        started.append(a)
        raise ValueError("a new training started")
    monkeypatch.setattr(torch_trainer.TorchTrainer, "train", train)
    state = tmp_path / "state"
    data = state / "datasets" / "d.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "x"},
                                             {"role": "assistant", "content": "y"}]}) + "\n")
    s = Store(state)
    s.set_value("latest_dataset", {"path": str(data), "hash": "d", "examples": 1, "by_provenance": {}})
    s.save_adapter({"adapter_id": "c001-done", "steps": 60, "stopped": False, "created": 1.0})
    s.close()
    code, _, err = cli(["train", "--resume", "--koans", str(koan_dir), "--state", str(state)], capsys)
    assert code == 2 and not started
    one_error(err, "nothing to resume")


def test_resume_when_the_dataset_file_is_gone(koan_dir, tmp_path, capsys):
    state = tmp_path / "state"
    s = Store(state)
    s.set_value("latest_dataset", {"path": str(state / "datasets" / "gone.jsonl"), "hash": "gone", "examples": 3,
                                   "by_provenance": {}})
    s.set_value("training_adapter_id", "c001-interrupted")
    s.close()
    code, _, err = cli(["train", "--resume", "--koans", str(koan_dir), "--state", str(state)], capsys)
    assert code == 2
    one_error(err, "gone.jsonl")


# ---- terminal control sequences in untrusted text (issue 12, item 6) -------------------------------------------

SEQUENCES = {"osc52-clipboard": "\x1b]52;c;aGVsbG8=\x07", "clear-screen": "\x1b[2J\x1b[H",
             "alt-screen": "\x1b[?1049h", "carriage-return": "ok\rFAKE", "c1-csi": "\x9b2J",
             "bidi-override": "\u202eevil\u202c"}


def assert_terminal_safe(text: str) -> None:
    bad = [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7f <= ord(c) <= 0x9f
           or c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"]
    assert not bad, (bad, text)


def rust_str(s: str) -> str:
    """`s` as a Rust string literal, every non-printable character escaped (the source itself stays ASCII)."""
    return '"' + "".join(c if 0x20 <= ord(c) < 0x7f and c not in '"\\' else f"\\u{{{ord(c):x}}}" for c in s) + '"'


def _fix_printing(seq: str) -> str:
    """A program for bc_901 whose report() prints `seq` and panics with it: its test fails, its output has `seq`."""
    return ("pub fn total(v: &[i32]) -> i32 { v.iter().sum() }\n\npub fn report() -> (i32, usize) {\n"
            f"    println!(\"{{}}\", {rust_str(seq)});\n    panic!(\"{{}}\", {rust_str(seq)});\n}}\n")


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_verify_prints_the_test_output_with_its_control_characters_shown(koan_dir, tmp_path, capsys, name):
    seq = SEQUENCES[name]
    fix = tmp_path / "fix.rs"
    fix.write_text(_fix_printing(seq))
    code, out, err = cli(["verify", str(fix), "--koan", "bc_901", "--koans", str(koan_dir)], capsys)
    assert code == 1 and "FAIL bc_901" in out, out + err
    assert_terminal_safe(out + err)
    from sleepy_tui.safe_text import terminal_safe
    assert terminal_safe(seq) in out                                  # shown, as text


def test_run_stream_prints_model_tokens_with_their_control_characters_shown(koan_dir, tmp_path, capsys):
    hostile = "".join(SEQUENCES.values())
    replies = tmp_path / "replies.json"
    replies.write_text(json.dumps([f"{hostile} [bold]x[/]\n```rust\npub fn f() {{}} // {hostile}\n```\n", hostile]))
    code, out, err = cli(["run", "--stream", "--backend", "fake", "--model", str(replies), "--koan", "bc_901",
                          "--max-attempts", "2", "--koans", str(koan_dir), "--state", str(tmp_path / "state")], capsys)
    assert code == 0, err
    assert_terminal_safe(out + err)
    assert "\\x1b]52;c;aGVsbG8=\\x07" in out and "\\x1b[?1049h" in out and "ok\\rFAKE" in out and "[bold]x[/]" in out


@pytest.mark.parametrize("args", [["koans", "list"], ["koans", "show", "bc_903"], ["koans", "show", "bc_903",
                                                                                   "--solution"]])
def test_koan_text_is_printed_with_its_control_characters_shown(koan_dir, capsys, args):
    toml_seq = "".join(f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) >= 0x7f else c
                       for c in "".join(SEQUENCES.values()))
    text = mini_koan("bc_903").replace('title = "Report total and count of readings"', f'title = "evil {toml_seq}"') \
        .replace('hint = "Borrow instead of moving."', f'hint = "{toml_seq}"')
    write_koan(koan_dir, "bc_903", text=text)
    code, out, err = cli(args + ["--koans", str(koan_dir)], capsys)
    assert code == 0, err
    assert_terminal_safe(out + err)
    assert "evil \\x1b]52;c;aGVsbG8=\\x07" in out


@pytest.mark.parametrize("args", [
    ["status", "--state", "{odd_file}"],                                # "can't be the state folder"
    ["koans", "list", "--koans", "/nowhere/\x1b[?1049h"],               # "no such koan folder"
    ["verify", "/nowhere/\x1b[2J.rs", "--koan", "bc_901"],              # "cannot read"
    ["verify", "{fix}", "--koan", "\x1b]52;c;aGk=\x07"],                # "unknown koan id"
], ids=["state-folder", "koans-folder", "verify-file", "koan-id"])
def test_error_lines_quoting_input_show_its_control_characters(koan_dir, tmp_path, capsys, args):
    fix = tmp_path / "fix.rs"
    fix.write_text("pub fn f() {}\n")
    odd = tmp_path / "state\x1b[2J"
    odd.write_text("a file, not a folder")
    args = [a.replace("{fix}", str(fix)).replace("{odd_file}", str(odd)) for a in args]
    extra = [] if "--koans" in args else ["--koans", str(koan_dir)]
    code, out, err = cli(args + extra, capsys)
    assert code == 2
    assert_terminal_safe(out + err)
    assert "\\x1b" in err and "Traceback" not in err


# ---- files that are not regular files, or too large (issue 12, item 7) ---------------------------------------

def sleepy(args: list[str], tmp_path: Path, timeout: float = 90, memory_gb: int = 4) -> tuple[int, str, str]:
    """The CLI as a subprocess: a hang ends in a timeout, unbounded reading in a MemoryError, a crash in a signal,
    none of them in this test process."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_gb << 30, memory_gb << 30))
    env = {**os.environ, "SLEEPY_STATE_DIR": str(tmp_path / "state")}
    try:
        p = subprocess.run([sys.executable, "-m", "sleepy_tui", *args], capture_output=True, text=True,
                           timeout=timeout, env=env, preexec_fn=limit, cwd=Path(__file__).parent.parent)
    except subprocess.TimeoutExpired:
        pytest.fail(f"sleepy {' '.join(args)} hung for {timeout} s")
    return p.returncode, p.stdout, p.stderr


def _fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


def _dev_zero(p: Path) -> Path:
    p.symlink_to("/dev/zero")
    return p


def _too_large(p: Path) -> Path:
    p.write_bytes(b"# padding\n" * 200_000)           # 2 MB of comments: TOML and Rust would both accept it
    return p


BAD_FILES = {"fifo": (_fifo, "a FIFO, not a regular file"), "dev-zero": (_dev_zero, "a character device, not a "
             "regular file"), "too-large": (_too_large, "too large (1.9 MiB; at most 1.0 MiB)")}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_koan_file_that_is_not_a_regular_file_is_skipped_with_one_warning(koan_dir, tmp_path, kind):
    make, message = BAD_FILES[kind]
    make(koan_dir / "borrow_checker" / "bc_950.toml")
    code, out, err = sleepy(["koans", "list", "--koans", str(koan_dir)], tmp_path)
    assert code == 0 and "Traceback" not in err, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"bc_950.toml: cannot read: {message}" in warnings[0], err
    assert _listed(out) == {"bc_900", "bc_901", "bc_902"}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_verify_a_candidate_that_is_not_a_regular_file_is_one_line(koan_dir, tmp_path, kind):
    make, message = BAD_FILES[kind]
    fix = make(tmp_path / "fix.rs")
    code, _, err = sleepy(["verify", str(fix), "--koan", "bc_901", "--koans", str(koan_dir)], tmp_path)
    assert code == 2
    one_error(err, f"{fix}: cannot read: {message}")


def test_verify_dev_zero_itself(koan_dir, tmp_path):
    code, _, err = sleepy(["verify", "/dev/zero", "--koan", "bc_901", "--koans", str(koan_dir)], tmp_path)
    assert code == 2
    one_error(err, "/dev/zero: cannot read: a character device, not a regular file")


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_frozen_manifest_that_is_not_a_regular_file_is_one_line(koan_dir, tmp_path, kind):
    make, message = BAD_FILES[kind]
    manifest = koan_dir / "frozen_eval.toml"
    manifest.unlink()
    make(manifest)
    code, _, err = sleepy(["koans", "list", "--koans", str(koan_dir)], tmp_path)
    assert code == 2
    one_error(err, f"frozen_eval.toml: cannot read: {message}")


@pytest.mark.parametrize("content, message", [
    (bytes(range(256)) * 8, "frozen_eval.toml: not valid UTF-8 (byte 128)"),
    (b"\x00\x01GGUF\x03\xff\xfe" * 50, "frozen_eval.toml: not valid UTF-8"),
    (b"koans = " + b"[" * 100_000, "frozen_eval.toml: invalid TOML: nested too deeply"),
    (b'[[koans]]\nid = ["bc_900"]\nhash = "x"\n', "frozen_eval.toml: expected [[koans]] tables with id and hash"),
], ids=["binary", "binary-nul", "nested", "id-a-list"])
def test_a_binary_or_odd_frozen_manifest_is_one_line(koan_dir, capsys, content, message):
    (koan_dir / "frozen_eval.toml").write_bytes(content)
    code, _, err = cli(["koans", "list", "--koans", str(koan_dir)], capsys)
    assert code == 2
    one_error(err, message)


def test_a_deeply_nested_koan_file_is_skipped_with_one_warning(koan_dir, capsys):
    (koan_dir / "borrow_checker" / "bc_950.toml").write_text("buggy = " + "[" * 100_000)
    code, out, err = cli(["koans", "list", "--koans", str(koan_dir)], capsys)
    assert code == 0 and "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "bc_950.toml: invalid TOML: nested too deeply" in warnings[0], err


# ---- --ollama-host that is not an address -----------------------------------------------------------------------

@pytest.mark.parametrize("host", ["::::not a url", "http://[::1", "localhost:99999", "127.0.0.1:abc",
                                  "http://exa mple:11434"])
@pytest.mark.parametrize("how", ["flag", "SLEEPY_OLLAMA_HOST", "OLLAMA_HOST"])
@pytest.mark.parametrize("backend", ["ollama", "auto"])
def test_an_ollama_host_that_is_not_an_address_is_one_line(koan_dir, tmp_path, capsys, monkeypatch, host, how,
                                                           backend):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    args = ["run", "--backend", backend, "--count", "1", "--koans", str(koan_dir), "--state", str(tmp_path / "s")]
    if how == "flag":
        args += ["--ollama-host", host]
    else:
        monkeypatch.setenv(how, host)
    code, _, err = cli(args, capsys)
    assert code == 2
    line = one_error(err, f"{host!r} is not an Ollama address", "host:port")
    assert ("OLLAMA_HOST" in line) == (how == "OLLAMA_HOST")
    assert not Store(tmp_path / "s").runs()                            # refused before any run began


# ---- damaged state, beyond torn lines ------------------------------------------------------------------------------

def _json_damage(kind: str, original: str) -> str:
    data = json.loads(original)
    if kind == "top-level-list":
        return json.dumps([data, 1, 2])
    if kind == "nested-200k":
        return "[" * 200_000 + "]" * 200_000
    if kind == "nested-in-a-record":
        field = '"status": "done"' if '"status": "done"' in original else '"outcome": "pass"'
        return original.replace(field, field.split(":")[0] + ": " + "[" * 200_000 + "]" * 200_000, 1)
    table = "runs" if "runs" in data else "episodes"
    if kind == "table-a-number":
        data[table] = 5
    elif kind == "table-a-list":
        data[table] = list(data[table].values())
    elif kind == "record-a-number":
        data[table][next(iter(data[table]))] = 7
    elif kind == "record-id-not-a-number":
        data[table]["x"] = {"run_id": "day-x"}
    return json.dumps(data)


DAMAGE = ["top-level-list", "nested-200k", "nested-in-a-record", "table-a-number", "table-a-list",
          "record-a-number", "record-id-not-a-number"]


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("which", ["sleepy.json", "episodes/day-5.json"])
def test_state_file_of_the_wrong_shape_loads_with_the_damage_reported(tmp_path, capsys, damage, which):
    state = tmp_path / "state"
    _state_with_history(state)
    s = Store(state)
    s.set_value("latest_dataset", {"path": "d.jsonl"})
    s.close()
    path = state / which
    damaged = _json_damage(damage, path.read_text())
    assert damaged != path.read_text()
    path.write_text(damaged)
    code, out, err = cli(["status", "--state", str(state)], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert f"{path.name}: damaged; recovered" in err and ".corrupt-" in err
    backups = list(path.parent.glob(path.name + ".corrupt-*"))
    assert len(backups) == 1 and backups[0].read_text() == damaged      # the damaged original, kept beside it
    warnings: list[str] = []
    again = Store(state, on_warning=warnings.append)
    assert warnings == []                                               # recovered once, for good
    if which == "sleepy.json" and damage not in ("top-level-list", "nested-200k"):
        assert again.get_value("latest_dataset") == {"path": "d.jsonl"}   # the intact tables kept
    if which == "episodes/day-5.json":
        assert len(again.runs()) == 6


@pytest.mark.parametrize("which", ["sleepy.json", "episodes/day-5.json"])
def test_state_file_that_is_a_directory_is_one_line(tmp_path, capsys, which):
    state = tmp_path / "state"
    _state_with_history(state)
    path = state / which
    path.unlink()
    path.mkdir()
    code, _, err = cli(["status", "--state", str(state)], capsys)
    assert code == 2
    one_error(err, f"{path}: can't be read as a state file: Is a directory")
    assert path.is_dir()                                                # left as it was


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_state_file_that_is_not_a_regular_file_is_one_line(tmp_path, kind):
    state = tmp_path / "state"
    _state_with_history(state)
    make, message = BAD_FILES[kind]
    path = state / "sleepy.json"
    path.unlink()
    make(path)
    code, _, err = sleepy(["status", "--state", str(state)], tmp_path)
    assert code == 2
    one_error(err, f"{path}: can't be read as a state file: {message}")


# ---- a run that crashes is stored as failed --------------------------------------------------------------------

def test_a_run_that_crashes_is_stored_failed_and_is_one_line(koan_dir, tmp_path, capsys):
    replies = tmp_path / "replies.json"
    replies.write_text(json.dumps(["no code here"]))       # attempt 2 finds the script exhausted: an AssertionError
    state = tmp_path / "state"
    code, _, err = cli(["run", "--backend", "fake", "--model", str(replies), "--koan", "bc_901", "--max-attempts", "2",
                        "--koans", str(koan_dir), "--state", str(state)], capsys)
    assert code == 2
    one_error(err, "the run crashed", "ScriptExhausted", "stored as failed")
    runs = Store(state).runs()
    assert len(runs) == 1 and runs[0].status == "failed" and "ScriptExhausted" in runs[0].error


def _engine(koan_dir: Path, state: Path, backend):
    from sleepy_tui.config import Settings
    from sleepy_tui.engine import Engine
    s = Settings(backend="fake", koans_dir=str(koan_dir), state_dir=str(state), max_attempts=1)
    return Engine(s, backend_factory=lambda *_a: backend)


@pytest.mark.parametrize("error", [ValueError("bad logits"), OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("llama_decode returned -1"), MemoryError(), ZeroDivisionError("x")],
                         ids=lambda e: type(e).__name__)
def test_a_crashed_eval_is_stored_failed_and_is_never_a_baseline(koan_dir, tmp_path, error):
    from sleepy_tui.backends.fake import ScriptedBackend
    from tests.test_app import fix
    engine = _engine(koan_dir, tmp_path / "state", ScriptedBackend([error]))
    with pytest.raises(type(error)):
        engine.run_agent(engine.corpus().eval_set, kind="eval")
    crashed = engine.store.runs()[-1]
    assert crashed.status == "failed" and crashed.error.startswith(type(error).__name__), crashed
    good = ScriptedBackend([fix("bc_900")])
    engine.backend_factory = lambda *_a: good
    baseline = engine.baseline_eval()
    assert baseline != crashed.run_id and good.calls                 # a fresh eval, not the crashed one
    assert engine.store.run(baseline).status == "done"
    engine.close()


def test_a_crash_in_the_check_is_stored_failed(koan_dir, tmp_path, monkeypatch):
    from sleepy_tui.backends.fake import ScriptedBackend
    from tests.test_app import fix
    engine = _engine(koan_dir, tmp_path / "state", ScriptedBackend([fix("bc_901"), fix("bc_902")]))
    real, calls = engine.sandbox.check, []

    def check(code, tests, *a, **k):
        calls.append(code)
        if len(calls) == 4:                          # buggy 901, buggy 902, fix 901: then the fix of 902
            raise OSError(errno.EMFILE, "Too many open files")
        return real(code, tests, *a, **k)
    monkeypatch.setattr(engine.sandbox, "check", check)
    with pytest.raises(OSError):
        engine.run_agent(engine.corpus().train_set, kind="day")
    run = engine.store.runs()[-1]
    assert run.status == "failed" and "Too many open files" in run.error
    engine.close()


def test_an_interrupted_run_is_not_done(koan_dir, tmp_path):
    from sleepy_tui.backends.fake import ScriptedBackend
    engine = _engine(koan_dir, tmp_path / "state", ScriptedBackend([KeyboardInterrupt()]))
    with pytest.raises(KeyboardInterrupt):
        engine.run_agent(engine.corpus().eval_set, kind="eval")
    assert engine.store.runs()[-1].status == "cancelled"
    engine.close()


def test_an_old_crashed_run_recorded_done_is_not_a_baseline(koan_dir, tmp_path):
    """Before runs that crashed were stored failed, one could be `done` with fewer koans than it was given."""
    from sleepy_tui.backends.fake import ScriptedBackend
    from tests.test_app import fix
    good = ScriptedBackend([fix("bc_900")])
    engine = _engine(koan_dir, tmp_path / "state", good)
    engine.store.save_run({"run_id": "eval-old", "kind": "eval", "status": "done", "koan_ids": ["bc_900"],
                           "passed": 0, "total": 0, "adapter": "", "adapter_id": "", "started": 1.0})
    assert engine.baseline_eval() != "eval-old" and good.calls
    engine.close()


# ---- a GGUF adapter that is not a LoRA for this base (it crashed llama.cpp: SIGSEGV) -------------------------

def _base_gguf() -> Path:
    from sleepy_tui.backends.embedded import EmbeddedBackend
    return EmbeddedBackend().path


def write_lora_gguf(path: Path, *, arch: str = "llama", general_type: str | None = "adapter",
                    adapter_type: str | None = "lora", tensors: dict[str, tuple[int, ...]] | None = None) -> Path:
    """A small GGUF LoRA adapter (rank 2 on layer 0's attn_q and attn_k of the embedded model unless `tensors`,
    numpy shapes, say otherwise): what gguf_export writes, zero weights."""
    import gguf
    import numpy as np

    from sleepy_tui.training.gguf_check import base_info
    if tensors is None:
        shapes = base_info(_base_gguf())[1]
        tensors = {}
        for w in ("blk.0.attn_q.weight", "blk.0.attn_k.weight"):
            fan_in, fan_out = shapes[w]                            # ggml order: [in, out]
            tensors[f"{w}.lora_a"], tensors[f"{w}.lora_b"] = (2, fan_in), (fan_out, 2)
    writer = gguf.GGUFWriter(str(path), arch=arch)
    if general_type:
        writer.add_string("general.type", general_type)
    if adapter_type:
        writer.add_string("adapter.type", adapter_type)
    writer.add_float32("adapter.lora.alpha", 4.0)
    for name, shape in tensors.items():
        writer.add_tensor(name, np.zeros(shape, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _truncated(p: Path) -> Path:
    write_lora_gguf(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])
    return p


BAD_ADAPTERS = {
    "random-bytes": (lambda p: p.write_bytes(os.urandom(5000)), "is not a GGUF file"),
    "empty": (lambda p: p.write_bytes(b""), "is not a GGUF file"),
    "magic-then-garbage": (lambda p: p.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(3000)), "damaged GGUF file"),
    "huge-counts": (lambda p: p.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16 + b"\x00" * 64),
                    "damaged GGUF file"),
    "truncated": (_truncated, "damaged GGUF file"),
    "a-model": (lambda p: write_lora_gguf(p, general_type="model"), "general.type is 'model', not 'adapter'"),
    "no-type": (lambda p: write_lora_gguf(p, general_type=None), "general.type is None, not 'adapter'"),
    "control-vector": (lambda p: write_lora_gguf(p, adapter_type="control_vector"),
                       "adapter.type is 'control_vector', not 'lora'"),
    "other-architecture": (lambda p: write_lora_gguf(p, arch="qwen2"), "is for architecture 'qwen2'; the base"),
    "not-lora-tensor": (lambda p: write_lora_gguf(p, tensors={"blk.0.attn_q.weight": (576, 576)}),
                        "tensor 'blk.0.attn_q.weight' is not a LoRA tensor"),
    "lora-b-missing": (lambda p: write_lora_gguf(p, tensors={"blk.0.attn_q.weight.lora_a": (2, 576)}),
                       "blk.0.attn_q.weight.lora_b is missing"),
    "unknown-base-tensor": (lambda p: write_lora_gguf(p, tensors={"blk.99.attn_q.weight.lora_a": (2, 576),
                                                                  "blk.99.attn_q.weight.lora_b": (576, 2)}),
                            "blk.99.attn_q.weight is not a tensor of the base model"),
    "wrong-shape": (lambda p: write_lora_gguf(p, tensors={"blk.0.attn_q.weight.lora_a": (2, 100),
                                                          "blk.0.attn_q.weight.lora_b": (576, 2)}),
                    "blk.0.attn_q.weight has lora_a [100, 2] and lora_b [2, 576], which do not fit"),
    "ranks-differ": (lambda p: write_lora_gguf(p, tensors={"blk.0.attn_q.weight.lora_a": (2, 576),
                                                           "blk.0.attn_q.weight.lora_b": (576, 3)}),
                     "which do not fit"),
    "no-tensors": (lambda p: write_lora_gguf(p, tensors={}), "holds no LoRA tensors"),
    "directory": (lambda p: p.mkdir(), "is not a regular file"),
    "fifo": (lambda p: os.mkfifo(p), "is not a regular file"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ADAPTERS))
def test_a_bad_gguf_adapter_is_refused_before_llama_cpp_sees_it(tmp_path, kind):
    pytest.importorskip("llama_cpp")
    from sleepy_tui.backends.base import BackendUnavailable
    from sleepy_tui.backends.embedded import EmbeddedBackend
    make, message = BAD_ADAPTERS[kind]
    path = tmp_path / "adapter.gguf"
    make(path)
    with pytest.raises(BackendUnavailable) as e:
        EmbeddedBackend(adapter=str(path))
    assert str(e.value).startswith(f"adapter {path}") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_a_good_gguf_adapter_passes_the_check(tmp_path):
    from fixtures_training import random_lora_adapter

    from sleepy_tui.training.gguf_check import check_lora_adapter
    from sleepy_tui.training.gguf_export import _gguf_info, export_gguf_lora
    check_lora_adapter(write_lora_gguf(tmp_path / "small.gguf"), _base_gguf())
    info = _gguf_info(_base_gguf())                     # what the trainer exports: every layer, four modules
    cfg = {"model_type": "llama", "hidden_size": info["shapes"]["blk.0.attn_q.weight"][1],
           "num_attention_heads": info["heads"], "num_key_value_heads": info["kv_heads"],
           "intermediate_size": info["shapes"]["blk.0.ffn_up.weight"][0],
           "num_hidden_layers": sum(1 for n in info["shapes"] if n.endswith(".attn_q.weight"))}
    exported = export_gguf_lora(random_lora_adapter(tmp_path / "peft", cfg), tmp_path / "adapter.gguf",
                                base_gguf=_base_gguf())
    check_lora_adapter(exported, _base_gguf())


@pytest.mark.parametrize("kind", ["random-bytes", "magic-then-garbage", "other-architecture", "wrong-shape"])
def test_sleepy_run_with_a_bad_gguf_adapter_is_one_line_not_a_crash(koan_dir, tmp_path, kind):
    pytest.importorskip("llama_cpp")
    make, message = BAD_ADAPTERS[kind]
    adapter = tmp_path / "adapter.gguf"
    make(adapter)
    state = tmp_path / "state"
    code, _, err = sleepy(["run", "--backend", "embedded", "--adapter", str(adapter), "--koan", "bc_901",
                           "--max-attempts", "1", "--koans", str(koan_dir), "--state", str(state)], tmp_path)
    assert code == 2, (code, err)                         # not -11 (SIGSEGV)
    one_error(err, str(adapter), message)
    assert not [r for r in Store(state).runs() if r["status"] == "running"]


def test_a_fifo_named_config_toml_is_one_line_not_a_hang(tmp_path):
    import os
    import subprocess
    import sys
    state = tmp_path / "state"
    state.mkdir()
    os.mkfifo(state / "config.toml")
    proc = subprocess.run([sys.executable, "-m", "sleepy_tui", "--state", str(state), "status"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)   # a hang fails here, in a minute
    assert proc.returncode == 2
    assert "config.toml: cannot read: a FIFO, not a regular file" in proc.stderr and "Traceback" not in proc.stderr
