"""Shared fixtures. Every test gets its own state folder: no test reads or writes the checkout's state/."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MINI_KOAN = '''\
id = "{id}"
family = "{family}"
title = "Report total and count of readings"
expected_error = "E0382"
hint = "Borrow instead of moving."
buggy = \'\'\'
pub fn total(v: Vec<i32>) -> i32 {{
    v.iter().sum()
}}

pub fn report() -> (i32, usize) {{
    let readings = vec![1, 2, {n}];
    let t = total(readings);
    (t, readings.len())
}}
\'\'\'
solution = \'\'\'
pub fn total(v: &[i32]) -> i32 {{
    v.iter().sum()
}}

pub fn report() -> (i32, usize) {{
    let readings = vec![1, 2, {n}];
    let t = total(&readings);
    (t, readings.len())
}}
\'\'\'
tests = \'\'\'
    #[test]
    fn reports_total_and_count() {{
        assert_eq!(report(), ({total}, 3));
    }}
\'\'\'
'''


def mini_koan(kid: str, family: str = "borrow_checker") -> str:
    """A valid koan; the program differs by id so that no two mini koans are copies."""
    n = 3 + sum(map(ord, kid)) % 997
    return MINI_KOAN.format(id=kid, family=family, n=n, total=3 + n)


# The fixture corpus's frozen koan: a program of its own, so the mini koans (which differ only by a number) are
# not near-copies of it (similarity.py would rightly call them leaks of the eval set).
FROZEN_KOAN = '''\
id = "{id}"
family = "{family}"
title = "Shout every word and count them"
expected_error = "E0382"
hint = "Take what you need from a vector before a loop or adaptor consumes it."
buggy = \'\'\'
pub fn shout(words: Vec<String>) -> (Vec<String>, usize) {{
    let loud: Vec<String> = words.into_iter().map(|w| w.to_uppercase()).collect();
    (loud, words.len())
}}
\'\'\'
solution = \'\'\'
pub fn shout(words: Vec<String>) -> (Vec<String>, usize) {{
    let count = words.len();
    let loud: Vec<String> = words.into_iter().map(|w| w.to_uppercase()).collect();
    (loud, count)
}}
\'\'\'
tests = \'\'\'
    #[test]
    fn shouts_and_counts() {{
        let (loud, n) = shout(vec!["hi".to_string(), "rust".to_string()]);
        assert_eq!(loud, vec!["HI".to_string(), "RUST".to_string()]);
        assert_eq!(n, 2);
    }}
\'\'\'
'''


def frozen_koan(kid: str = "bc_900", family: str = "borrow_checker") -> str:
    return FROZEN_KOAN.format(id=kid, family=family)


def write_koan(root: Path, kid: str, family: str = "borrow_checker", text: str | None = None) -> Path:
    path = root / family / f"{kid}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else mini_koan(kid, family))
    return path


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("SLEEPY_STATE_DIR", str(state))
    monkeypatch.delenv("SLEEPY_HOME", raising=False)
    monkeypatch.delenv("SLEEPY_CONFIG", raising=False)
    # The embedded model of the tests is the small one shipped in a package (fast, always there), not the
    # table's default (1 GB, pulled): a test that means another model names it.
    monkeypatch.setenv("SLEEPY_EMBEDDED_MODEL", "smollm2-135m")
    return state


@pytest.fixture
def koan_dir(tmp_path) -> Path:
    """A tiny corpus: two training koans and one frozen eval koan with its manifest."""
    from sleepy_tui.koans import load_corpus, write_manifest
    root = tmp_path / "koans"
    write_koan(root, "bc_901")
    write_koan(root, "bc_902")
    write_koan(root, "bc_900", text=frozen_koan())
    corpus = load_corpus(root)
    write_manifest(root / "frozen_eval.toml", [corpus.koans["bc_900"]])
    return root


@pytest.fixture
def corpus(koan_dir):
    """The tiny corpus of `koan_dir`, loaded."""
    from sleepy_tui.koans import load_corpus
    return load_corpus(koan_dir)


@pytest.fixture
def store(tmp_path):
    """An empty store in a tmp state folder."""
    from sleepy_tui.store import Store
    return Store(tmp_path / "state")


@pytest.fixture(scope="session")
def sandbox():
    from sleepy_tui.sandbox import Limits, Sandbox
    sb = Sandbox(Limits(run_timeout_s=3.0, compile_timeout_s=60.0, memory_mb=512))
    yield sb
    sb.close()


def dedent(s: str) -> str:
    return textwrap.dedent(s).strip("\n") + "\n"


# ---- the engine with the scripted backend and a trainer double (test_engine, test_report) ---------------------

class RecordingTrainer:
    """Writes an adapter folder and a falling loss; remembers the dataset it was given."""
    name = "fake"

    def __init__(self):
        self.datasets = []

    def train(self, dataset, config, out_dir, *, on_event, stop=None, resume=True):
        import json

        from sleepy_tui import events as ev
        from sleepy_tui.training.base import TrainResult
        self.datasets.append([json.loads(line) for line in open(dataset)])
        (out_dir / "adapter").mkdir(parents=True, exist_ok=True)
        losses = [2.0 / (i + 1) for i in range(config.steps)]
        for i, loss in enumerate(losses, 1):
            on_event(ev.TrainStep(i, config.steps, loss, config.learning_rate, 100.0, 0.0))
        return TrainResult(out_dir / "adapter", config.steps, losses)


@pytest.fixture
def setup(koan_dir, tmp_path):
    """(engine, corpus, replies, trainer): one scripted backend plays `replies` for every stage."""
    from sleepy_tui.backends.fake import ScriptedBackend
    from sleepy_tui.config import Settings
    from sleepy_tui.engine import Engine
    from sleepy_tui.koans import load_corpus
    corpus = load_corpus(koan_dir)
    settings = Settings(backend="fake", koans_dir=str(koan_dir), state_dir=str(tmp_path / "state"), max_attempts=1,
                        steps=3)
    trainer = RecordingTrainer()
    replies: list = []
    backend: list[ScriptedBackend] = []

    def factory(s, on_notice=None):  # one backend plays the whole script, whichever adapter is asked for
        if not backend:
            backend.append(ScriptedBackend(replies))
        return backend[0]
    engine = Engine(settings, backend_factory=factory, trainer_factory=lambda s: trainer)
    return engine, corpus, replies, trainer




# ---- real models, for the slow tests ---------------------------------------------------------------------------

def sleepy_command() -> list[str]:
    """The installed `sleepy` console script (`python -m sleepy_tui` where there is none)."""
    exe = Path(sys.executable).parent / "sleepy"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "sleepy_tui"]


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock held across processes (the xdist workers), waited for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def pulled_model():
    """name -> the verified GGUF of a table model, made present by the real `sleepy models pull NAME` (a no-op,
    after a hash check remembered from earlier, when it is there already).

    The models folder is the one `sleepy models pull` uses ($SLEEPY_MODELS_DIR, else <cache>/gguf: the user's
    cache, so a pull outlives the session; CI can point SLEEPY_MODELS_DIR at a cached folder). A clean machine
    pulls each model once; the xdist workers take turns (one pull at a time, the others then find it there).
    An unreachable package index skips the test, saying so; any other failed pull fails it."""
    from sleepy_tui import locations, models
    root = locations.models_dir()
    env = {**os.environ, "SLEEPY_MODELS_DIR": str(root)}
    outcome: dict[str, tuple[str, str]] = {}

    def pull(name: str) -> Path:
        spec = models.get(name)
        if name not in outcome:
            with file_lock(root / ".tests-pull.lock"):
                proc = subprocess.run([*sleepy_command(), "models", "pull", name], capture_output=True, text=True,
                                      env=env, stdin=subprocess.DEVNULL, timeout=1800)
            said = (proc.stdout + proc.stderr).strip()
            if proc.returncode == 0:
                outcome[name] = ("ok", said)
            elif "not reachable" in said:
                outcome[name] = ("skip", f"{name} is not in {root} and the package index is not reachable: "
                                         f"{said.splitlines()[-1]}")
            else:
                outcome[name] = ("fail", f"`sleepy models pull {name}` failed (exit {proc.returncode}):\n{said[-3000:]}")
        kind, said = outcome[name]
        if kind == "skip":
            pytest.skip(said)
        if kind == "fail":
            pytest.fail(said)
        st = models.status(spec)
        assert st.ready, f"{name} after `sleepy models pull`: {st.problem}\n{said}"
        return st.path

    return pull


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """Where the slow tests put de-quantized trainer bases (float32 copies of a GGUF, 2 GB for Qwen 0.5B):
    $SLEEPY_CACHE_DIR (kept for good), else one folder of this session shared by all its xdist workers, so a
    base is converted once a session, not once a worker."""
    env = os.environ.get("SLEEPY_CACHE_DIR")
    if env:
        return Path(env)
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "sleepy-model-cache"


@pytest.fixture(scope="session")
def converted_base(pulled_model, shared_cache):
    """name -> (its pulled GGUF, the float32 Hugging Face folder the torch trainer adapts), converted once under a
    lock (two workers converting the same 2 GB model at once would only cost twice the time and memory)."""
    from sleepy_tui.training.base_model import resolve_base

    def convert(name: str) -> tuple[Path, Path]:
        gguf = pulled_model(name)
        with file_lock(shared_cache / f".{name}.convert.lock"):
            return gguf, Path(resolve_base(str(gguf), shared_cache))

    return convert
