"""The CLI's messages: one line naming the file or value and what to do, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from sleepy_tui.cli import main
from tests.conftest import write_koan


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_koans_list_and_show(koan_dir, capsys):
    code, out, _ = run(["koans", "list", "--koans", str(koan_dir)], capsys)
    assert code == 0 and "bc_900" in out and "eval" in out and "3 koans" in out
    code, out, _ = run(["koans", "list", "--koans", str(koan_dir), "--split", "train"], capsys)
    assert "bc_900" not in out and "2 koans" in out
    code, out, _ = run(["koans", "show", "bc_901", "--koans", str(koan_dir), "--solution"], capsys)
    assert code == 0 and "--- buggy ---" in out and "--- solution ---" in out and "+    let t = total(&readings);" in out


def test_koans_check_passes_on_good_koans(koan_dir, capsys):
    code, out, _ = run(["koans", "check", "--koans", str(koan_dir)], capsys)
    assert code == 0 and "checked 3 koans: ok" in out


def test_koans_check_names_each_bad_koan(koan_dir, capsys):
    p = write_koan(koan_dir, "bc_903")
    p.write_text(p.read_text().replace('expected_error = "E0382"', 'expected_error = "E0499"'))
    q = write_koan(koan_dir, "bc_904")
    q.write_text(q.read_text().replace("let t = total(&readings);", "let t = total(&readings) + 1;"))
    r = write_koan(koan_dir, "bc_905", text="id = 'bc_905'\n")
    code, out, _ = run(["koans", "check", "--koans", str(koan_dir)], capsys)
    assert code == 1
    assert f"{p}: buggy program fails with E0382, not expected_error E0499" in out
    assert f"{q}: solution does not pass its tests (test_failure: test_failure:assert_eq)" in out
    assert f"{r}: missing field(s)" in out


def test_edited_frozen_koan_is_reported(koan_dir, capsys):
    p = koan_dir / "borrow_checker" / "bc_900.toml"
    p.write_text(p.read_text().replace("Shout every word", "Shout each word"))
    code, out, _ = run(["koans", "check", "--koans", str(koan_dir)], capsys)
    assert code == 1 and "frozen eval koan 'bc_900' was edited" in out


def test_verify(koan_dir, tmp_path, capsys):
    from sleepy_tui.koans import load_corpus
    k = load_corpus(koan_dir).koans["bc_901"]
    good, bad = tmp_path / "good.rs", tmp_path / "bad.rs"
    good.write_text(k.solution)
    bad.write_text(k.buggy)
    assert run(["verify", str(good), "--koan", "bc_901", "--koans", str(koan_dir)], capsys)[0] == 0
    code, out, _ = run(["verify", str(bad), "--koan", "bc_901", "--koans", str(koan_dir)], capsys)
    assert code == 1 and "E0382" in out
    code, _, err = run(["verify", str(tmp_path / "nope.rs"), "--koan", "bc_901", "--koans", str(koan_dir)], capsys)
    assert code == 2 and "nope.rs: cannot read" in err


@pytest.mark.parametrize("args, message", [
    (["run", "--backend", "nonsense"], "backend: unknown 'nonsense'"),
    (["train", "--steps", "-3"], "steps: must be > 0, got -3"),
    (["train", "--rank", "0"], "lora_rank: must be > 0, got 0"),
    (["koans", "show", "zz_999"], "unknown koan id(s): zz_999"),
    (["run", "--koan", "bc_900"], "belong(s) to the frozen eval set"),
    (["koans", "list", "--koans", "/nonexistent/koans"], "/nonexistent/koans: no such koan folder"),
    (["adapters", "promote", "c999"], "unknown adapter 'c999'"),
    (["adapters", "rollback"], "nothing to roll back"),
    (["export", "ollama", "--cycle", "4"], "no GGUF adapter for cycle 4"),
    (["train", "--resume"], "nothing to resume"),
])
def test_bad_input_is_one_clear_line(args, message, koan_dir, capsys):
    if "--koans" not in args:
        args = args + ["--koans", str(koan_dir)]
    code, _, err = run(args, capsys)
    assert code == 2
    lines = [l for l in err.splitlines() if l.startswith("sleepy: error:")]
    assert lines and message in err and "Traceback" not in err


def test_bad_config_file_lists_every_problem(tmp_path, koan_dir, capsys, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text('steps = 0\nlora_rank = -1\ncolour = "blue"\n')
    monkeypatch.setenv("SLEEPY_CONFIG", str(cfg))
    code, _, err = run(["koans", "list", "--koans", str(koan_dir)], capsys)
    assert code == 2
    assert "unknown setting 'colour'" in err and "steps: must be > 0" in err and "lora_rank: must be > 0" in err


def test_console_script_runs_without_traceback(koan_dir):
    exe = Path(sys.executable).parent / "sleepy"
    r = subprocess.run([str(exe), "koans", "show", "nope", "--koans", str(koan_dir)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "sleepy: error: unknown koan id(s): nope"


def test_every_grouped_setting_is_a_flag_of_its_commands():
    """The flags are made from Settings: none can be missing from a command of its group, and each reaches
    the settings the command builds."""
    from dataclasses import fields

    from sleepy_tui.cli import _settings, build_parser
    from sleepy_tui.config import Settings
    values = {int: "3", float: "0.5", str: "x"}
    parser = build_parser()
    for f in fields(Settings):
        group = f.metadata.get("group")
        if not group:
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        typ = {"int": int, "float": float}.get(f.type, str)
        for command in (["run", "eval", "train", "cycle"] if group == "model" else ["train", "cycle"]):
            required = ["--cycle", "0"] if command == "eval" else []
            args = parser.parse_args([command, *required, flag, values[typ]])
            assert getattr(args, f.name) == typ(values[typ]), (command, flag)
    args = parser.parse_args(["eval", "--cycle", "0", "--parallel", "3", "--retry-strategy", "fixed", "--seed", "7"])
    s = _settings(args)
    assert (s.parallel, s.retry_strategy, s.seed) == (3, "fixed", 7)


def test_eval_validation_runs_the_held_out_slice_and_reuses_a_finished_run(koan_dir, tmp_path, capsys, monkeypatch):
    import json

    from sleepy_tui import koans as koans_module
    code, _, err = run(["eval", "--validation", "--koans", str(koan_dir), "--backend", "fake"], capsys)
    assert code != 0 and "no validation slice" in err and "Traceback" not in err
    code, _, err = run(["eval", "--koans", str(koan_dir), "--backend", "fake"], capsys)
    assert code != 0 and "--cycle N is required" in err
    monkeypatch.setattr(koans_module, "VALIDATION_MIN", 1)        # bc_901's id hashes into the slice
    solution = koans_module.load_corpus(koan_dir).koans["bc_901"].solution
    script = tmp_path / "replies.json"
    script.write_text(json.dumps([f"```rust\n{solution}\n```"]))
    state = ["--koans", str(koan_dir), "--state", str(tmp_path / "st"), "--backend", "fake", "--model", str(script)]
    code, out, _ = run(["eval", "--validation", *state], capsys)
    assert code == 0 and "1/1 passed" in out and "borrow_checker" in out
    code, out, err = run(["eval", "--validation", *state], capsys)    # the one reply is spent: reused, not rerun
    assert code == 0 and "reusing it" in out + err and "1/1 passed" in out
    code, out, _ = run(["koans", "list", "--koans", str(koan_dir), "--split", "validation"], capsys)
    assert "bc_901" in out and "1 koans" in out
