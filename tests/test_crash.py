"""kill -9 at random moments: every koan reported finished is on disk, state always loads cleanly."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sleepy_tui.koans import load_corpus
from sleepy_tui.store import Store
from tests.conftest import write_koan

SLEEPY = str(Path(sys.executable).parent / "sleepy")
LINE = re.compile(r"^\[(\d+)/(\d+)\] (\S+) \.\.\. (PASS|FAIL) \(attempts: (\d+)")


@pytest.fixture
def corpus_and_replies(tmp_path):
    root = tmp_path / "koans"
    for i in range(6):
        write_koan(root, f"bc_{910 + i}")
    corpus = load_corpus(root)
    replies = []
    for k in corpus.train_set:  # one wrong attempt, then the fix
        replies += [f"```rust\n{k.buggy}\n```", f"```rust\n{k.solution}\n```"]
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(replies))
    return root, path


@pytest.mark.slow
def test_kill_during_run_loses_no_reported_koan(corpus_and_replies, tmp_path):
    root, replies = corpus_and_replies
    rng = random.Random(1234)
    counts = []
    for trial in range(20):
        state = tmp_path / f"state{trial}"
        proc = subprocess.Popen([SLEEPY, "run", "--backend", "fake", "--model", str(replies), "--koans", str(root),
                                 "--state", str(state)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        time.sleep(rng.uniform(0.5, 5.0))
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0]
        reported = [LINE.match(l).groups() for l in out.splitlines() if LINE.match(l)]
        warnings = []
        store = Store(state, on_warning=warnings.append)
        assert warnings == [], f"trial {trial}: state needed recovery: {warnings}"
        eps = store.episodes()
        for _, _, kid, verdict, attempts in reported:
            mine = [e for e in eps if e["koan_id"] == kid]
            assert len(mine) == int(attempts), f"trial {trial}: {kid} reported but not fully stored"
            assert (mine[-1]["outcome"] == "pass") == (verdict == "PASS")
        for e in eps:  # no half-written record: every stored episode is whole
            assert {"run_id", "koan_id", "attempt", "outcome", "prompt", "reply", "code"} <= set(e)
        counts.append(len(reported))
        store.close()
    # the kills landed at different moments: before, during and after the run
    assert min(counts) < 6 and len(set(counts)) >= 3, counts
