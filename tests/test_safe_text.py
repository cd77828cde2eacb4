"""Untrusted text never reaches a terminal as control sequences, nor the app as markup; untrusted files are read
only when they are regular files of bounded size.

The CLI side (`sleepy verify`, `sleepy run --stream`, koan text, error lines) is in test_bad_input.py.
"""

from __future__ import annotations

import io
import os
import threading

import pytest
from rich.console import Console

from sleepy_tui.safe_text import SafeStream, UnsafeFile, read_regular_file, terminal_safe

OSC52 = "\x1b]52;c;aGVsbG8=\x07"            # write "hello" to the clipboard
CLEAR = "\x1b[2J"
ALT_SCREEN = "\x1b[?1049h"
HOSTILE = f"[bold]loud[/] [/] {OSC52}{CLEAR}{ALT_SCREEN} back\roverwritten \x9b31m \u202eevil\u202c done"


# ---- terminal_safe -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, shown", [
    ("\x1b[2J", "\\x1b[2J"),
    ("\x1b]52;c;aGk=\x07", "\\x1b]52;c;aGk=\\x07"),
    ("\x1b[?1049h", "\\x1b[?1049h"),
    ("done\rFAKE", "done\\rFAKE"),
    ("a\x00b\x08c\x7fd", "a\\x00b\\x08c\\x7fd"),
    ("\x9b2J \x90 \x9c", "\\x9b2J \\x90 \\x9c"),            # C1: CSI, DCS and ST as one character each
    ("\u202eabc\u202c", "\\u202eabc\\u202c"),
    ("\u2066x\u2069 \u202a\u202b\u202d", "\\u2066x\\u2069 \\u202a\\u202b\\u202d"),
])
def test_control_characters_are_shown_not_executed(raw, shown):
    assert terminal_safe(raw) == shown


@pytest.mark.parametrize("text", ["plain", "tabs\tand\nnewlines\n", "[bold]markup[/] stays as text",
                                  "ünïcödé — “quotes” ✓ 漢字", "\\x1b is already text"])
def test_ordinary_text_is_unchanged(text):
    assert terminal_safe(text) == text


def test_crlf_becomes_lf_and_no_escape_survives():
    assert terminal_safe("line\r\nnext\r\n") == "line\nnext\n"
    out = terminal_safe(HOSTILE + "".join(map(chr, range(0x20))) + "".join(map(chr, range(0x7f, 0xa0))))
    assert not any(ord(c) < 0x20 and c not in "\n\t" or 0x7f <= ord(c) <= 0x9f for c in out)
    assert not any(c in out for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def test_safe_stream_filters_every_write_and_keeps_the_rest():
    raw = io.StringIO()
    s = SafeStream(raw)
    print(f"token {CLEAR}", file=s, flush=True)
    s.write(OSC52)
    s.writelines(["a\rb", "\n"])
    assert raw.getvalue() == "token \\x1b[2J\n\\x1b]52;c;aGVsbG8=\\x07a\\rb\n"
    assert s.getvalue() == raw.getvalue()           # anything else is the wrapped stream's


# ---- read_regular_file ---------------------------------------------------------------------------------------------

def test_a_regular_file_is_read_whole(tmp_path):
    p = tmp_path / "f.toml"
    p.write_bytes(b"x" * 1000)
    assert read_regular_file(p, 1000) == b"x" * 1000


@pytest.mark.parametrize("limit", [1, 999])
def test_a_file_over_the_limit_is_refused(tmp_path, limit):
    p = tmp_path / "f.toml"
    p.write_bytes(b"x" * 1000)
    with pytest.raises(UnsafeFile) as e:
        read_regular_file(p, limit)
    assert "too large (1000 bytes" in e.value.strerror


def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "koan.toml"
    os.mkfifo(fifo)
    result: list = []

    def read():
        try:
            read_regular_file(fifo, 1 << 20)
        except OSError as e:
            result.append(e)
    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():                                # unblock the reader so the test process can end
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert isinstance(result[0], UnsafeFile) and result[0].strerror == "a FIFO, not a regular file"


@pytest.mark.parametrize("device, kind", [("/dev/zero", "a character device"), ("/dev/null", "a character device")])
def test_devices_are_refused_even_through_a_symlink(tmp_path, device, kind):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    link = tmp_path / "fix.rs"
    link.symlink_to(device)
    for p in (device, link):
        with pytest.raises(UnsafeFile) as e:
            read_regular_file(p, 1 << 20)
        assert e.value.strerror == f"{kind}, not a regular file"


def test_a_directory_and_a_missing_file_keep_their_usual_errors(tmp_path):
    with pytest.raises(IsADirectoryError) as e:
        read_regular_file(tmp_path, 10)
    assert e.value.strerror == "Is a directory"
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "gone", 10)


# ---- the app's renderables -------------------------------------------------------------------------------------

def _rendered(renderable) -> str:
    """What a terminal would get for `renderable` with colours on: every escape that is not a colour is ours."""
    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=200,
                      legacy_windows=False)
    console.print(renderable)
    return console.file.getvalue()


def _plain(renderable) -> str:
    console = Console(file=io.StringIO(), force_terminal=False, color_system=None, width=200)
    console.print(renderable)
    return console.file.getvalue()


def _only_sgr(out: str) -> bool:
    """True if every ESC in `out` starts a colour/style sequence (ESC [ digits;... m), as Rich writes them."""
    import re
    return not re.sub(r"\x1b\[[0-9;]*m", "", out).count("\x1b")


def _hostile_renderables():
    from sleepy_tui.app import render
    diag = {"level": "error", "message": HOSTILE,
            "rendered": f"error[E0308]: mismatched types {HOSTILE}\n --> /tmp/x/main.rs:1:5\n  |\n"
                        f"1 | let x = \"{CLEAR}\";\n  |         ^^^^ {OSC52}\n"}
    return {
        "code_block": render.code_block(f"fn main() {{ let s = \"{HOSTILE}\"; }}"),
        "diagnostic": render.diagnostic(diag),
        "diff": render.diff("fn a() {}\n", f"fn a() {{ {HOSTILE} }}\n", "buggy", "attempt 1"),
        "outcome": render.outcome("test_failure", f"test_failure:{HOSTILE}"),
        "banner": render.banner(f"bc_{HOSTILE}", False, 2, HOSTILE),
        "heading": render.heading(f"run {HOSTILE}"),
    }


@pytest.mark.parametrize("name", ["code_block", "diagnostic", "diff", "outcome", "banner", "heading"])
def test_render_shows_markup_and_escapes_as_text(name):
    r = _hostile_renderables()[name]
    out = _rendered(r)
    assert _only_sgr(out), repr(out)
    assert "\x07" not in out and "\x9b" not in out and "\u202e" not in out and "\r" not in out
    plain = _plain(r)
    assert "\\x1b]52;c;aGVsbG8=\\x07" in plain and "\\x1b[2J" in plain and "\\x1b[?1049h" in plain
    assert "\\u202e" in plain
    if name != "code_block":          # the highlighter may split `[bold]` into tokens; its letters stay
        assert "[bold]loud[/] [/]" in plain


def test_failure_review_page_is_safe():
    from sleepy_tui.app import render
    from sleepy_tui.app.state import FailureItem
    from sleepy_tui.koans import Koan
    from sleepy_tui.metrics import KoanOutcome
    koan = Koan(id="bc_1", family="borrow_checker", title=f"title {HOSTILE}", expected_error="E0382",
                buggy=f"fn a() {{}} // {CLEAR}\n", solution="fn a() {}\n", tests="#[test] fn t() {}")
    ep = {"attempt": 1, "outcome": "compile_error", "signature": f"E0308:{OSC52}", "code": f"fn a() {{ {HOSTILE} }}",
          "diagnostics": [{"level": "error", "rendered": f"error: {HOSTILE}"}]}
    outcome = KoanOutcome("bc_1", "borrow_checker", False, 1, None, ep["signature"], [ep["signature"]])
    item = FailureItem("bc_1", "borrow_checker", koan, outcome, [ep])
    out = _rendered(render.failure(item))
    assert _only_sgr(out) and "\x07" not in out
    assert "\\x1b[2J" in _plain(render.failure(item))


# ---- the app, driven by a Pilot ------------------------------------------------------------------------------------

async def test_transcript_shows_hostile_model_output_as_text(koan_dir, _isolated_state):
    from test_app import make_app, settle

    from sleepy_tui.app.widgets.transcript import Transcript
    # The reply streams markup and escape sequences, and its code has them in a string literal: rustc's
    # diagnostic quotes that line back (E0308), so compiler output carries them too.
    reply = (f"{HOSTILE}\n[red]not red[/red] and a lone [/]\n```rust\npub fn report() -> (i32, usize) {{\n"
             f"    let s: i32 = \"{OSC52}{CLEAR}{ALT_SCREEN}\";\n    (s, 0)\n}}\n```\n")
    app, _ = make_app(koan_dir, _isolated_state, [reply] * 4)        # 2 training koans, 2 attempts each
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        transcript = app.main_screen.query_one(Transcript)
        text = transcript.plain_text()
        assert "[bold]loud[/] [/]" in text and "[red]not red[/red] and a lone [/]" in text   # markup as text
        assert "\\x1b]52;c;aGVsbG8=\\x07" in text and "\\x1b[2J" in text and "\\x1b[?1049h" in text
        assert "\\u202eevil" in text and "back\\roverwritten" in text
        assert "error[E0308]" in text                                                      # compiler output
        segments = [seg.text for strip in transcript.log_widget.lines for seg in strip]
        joined = "".join(segments)
        assert "\x1b" not in joined and "\x07" not in joined and "\r" not in joined and "\u202e" not in joined


async def test_notifications_quote_errors_as_text(koan_dir, _isolated_state):
    from test_app import make_app, settle

    from sleepy_tui.backends.base import BackendUnavailable
    app, _ = make_app(koan_dir, _isolated_state, [])

    def unavailable(_s, _notice=None):
        raise BackendUnavailable(f"no model [bold]{HOSTILE}[/bold] [/]")
    app.engine.backend_factory = unavailable
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        await pilot.pause()
        shown = list(app._notifications)
        assert shown and all(n.markup is False for n in shown)          # never parsed as markup
        assert any("no model [bold][bold]loud[/] [/]" in n.message and "\\x1b]52;c;" in n.message
                   and "\\x1b[2J" in n.message for n in shown), shown
        assert not any("\x1b" in n.message or "\u202e" in n.message for n in shown)
        assert app.is_running and not app.run_busy
