"""Garbage from the model: empty, endless, invalid text, no code. Each is a failed attempt, never a crash."""

from typing import Iterator

from sleepy_tui.agent import Agent
from sleepy_tui.backends.base import Backend, Chunk, GenOptions
from sleepy_tui.backends.fake import ScriptedBackend
from sleepy_tui.config import Settings
from sleepy_tui.koans import load_corpus
from sleepy_tui.store import Store


class Endless(Backend):
    name = "endless"

    def stream(self, messages, options) -> Iterator[Chunk]:
        while True:
            yield Chunk("fn main() { loop {} } " * 4)


def run_with(backend, koan_dir, tmp_path, sandbox, attempts=1):
    koan = load_corpus(koan_dir).koans["bc_901"]
    store = Store(tmp_path / "state")
    result = Agent(backend, sandbox, store, Settings(max_attempts=attempts, max_tokens=64)).run([koan])
    return Store(tmp_path / "state").episodes(result.run_id)


def test_endless_output_is_cut_at_max_tokens():
    reply = Endless(model="x").chat([{"role": "user", "content": "hi"}], GenOptions(max_tokens=64))
    assert reply.truncated and 64 * 16 < len(reply.text) < 64 * 16 + 200


def test_endless_reply_becomes_an_episode(koan_dir, tmp_path, sandbox):
    eps = run_with(Endless(model="x"), koan_dir, tmp_path, sandbox)
    assert len(eps) == 1 and eps[0]["outcome"] in ("compile_error", "no_code", "test_failure")


def test_empty_reply_is_no_code(koan_dir, tmp_path, sandbox):
    eps = run_with(ScriptedBackend([""]), koan_dir, tmp_path, sandbox)
    assert (eps[0]["outcome"], eps[0]["signature"]) == ("no_code", "no_code")


def test_invalid_unicode_and_nul_bytes_are_stored_safely(koan_dir, tmp_path, sandbox):
    bad = "```rust\npub fn x() {}\udcff\x00\n```"
    eps = run_with(ScriptedBackend([bad]), koan_dir, tmp_path, sandbox)
    assert "\x00" not in eps[0]["reply"] and "\udcff" not in eps[0]["reply"]
    assert eps[0]["outcome"] == "compile_error"


def test_prose_only_and_binary_noise(koan_dir, tmp_path, sandbox):
    eps = run_with(ScriptedBackend(["The borrow checker is strict. Try harder.", "\x1b[31m\x07\x08"]), koan_dir,
                   tmp_path, sandbox, attempts=2)
    assert [e["outcome"] for e in eps] == ["no_code", "no_code"]


def test_streaming_stops_once_the_code_block_is_closed():
    text = "```rust\npub fn f() {}\n```\nNow let me explain at great length " + "blah " * 500
    reply = ScriptedBackend([text], chunk_size=4).chat([{"role": "user", "content": "x"}])
    assert reply.text.startswith("```rust\npub fn f() {}\n```") and len(reply.text) < 40  # within a chunk
    full = ScriptedBackend([text], chunk_size=4).chat([{"role": "user", "content": "x"}],
                                                      GenOptions(stop_after_code=False))
    assert full.text == text
