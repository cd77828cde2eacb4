"""Check untrusted Rust code: compile it with the real rustc and run its tests, contained.

Three layers, each enough to stop what the others might miss:

1. **The screen** (screen.py) refuses, before compiling, a candidate that uses what no koan needs and a forged
   verdict or a host read would: `unsafe`, `extern`, assembly, link/section/export attributes, `#[path]`, the
   host-reading macros, std's process/env/fs/net/os modules, `macro_rules!`, shadowed test macros,
   hand-written comparison impls. rustc compiles with `-F unsafe_code` behind it.
2. **The verdict** is not read from anything the program under test can print or force. libtest writes one
   line per test into a log file whose name is a random nonce chosen after the candidate was compiled; in the
   jail only the jail's init (root) copies that log out, and every one of the koan's tests must be in it, by
   name, as passed, with the binary's own exit status 0 (reported by init too).
3. **The jail** (jail.py, when this process is root): rustc and the test binary each run in fresh PID, mount,
   network, IPC and UTS namespaces on a read-only view of the host with a small tmpfs as the only writable
   place, as a user id of their own per check, with an empty environment and rlimits; when the check ends
   every process of it ends. Without root there is no jail: rlimits and a process group only.

Output is read through a byte cap (the process is killed past it), from rustc as from the test binary.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .diagnostics import Diagnostic, compile_signature, errors, parse_rustc_json, panic_signature
from .koans import combine
from .safe_text import read_regular_file
from .screen import screen, test_names

_JAIL = str(Path(__file__).with_name("jail.py"))
_UIDS = itertools.count()      # one user id per check: no check can signal or read another
_UID_BASE = 1_900_000_000
MAX_DIAGNOSTICS = 32            # kept per check (a program can make rustc print thousands)
_LOGFILE_WARNING = "warning: `--logfile` is deprecated"


class SandboxError(RuntimeError):
    """The sandbox itself cannot work (e.g. no rustc); not an outcome of the checked code."""


@dataclass(frozen=True)
class Limits:
    compile_timeout_s: float = 60.0
    run_timeout_s: float = 10.0
    memory_mb: int = 1024          # address space of the test binary
    compile_memory_mb: int = 4096  # address space of rustc
    output_bytes: int = 1 << 20    # stdout+stderr of the test binary, and the largest file it may write
    compile_output_bytes: int = 4 << 20  # rustc's diagnostics
    max_processes: int = 64        # processes and threads of the check's own user (jail only)
    disk_mb: int = 16              # everything the test binary may write, /tmp included (jail only)
    compile_disk_mb: int = 512     # rustc's temp files and the binary (jail only)


@dataclass
class CheckResult:
    outcome: str
    signature: str | None                 # None when the code passes
    diagnostics: list[Diagnostic] = field(default_factory=list)
    tests_passed: int = 0
    tests_failed: int = 0
    output: str = ""                      # the test binary's output (capped)
    compile_ms: float = 0.0
    run_ms: float = 0.0

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    def to_dict(self) -> dict:
        return {
            "outcome": self.outcome, "signature": self.signature,
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "tests_passed": self.tests_passed, "tests_failed": self.tests_failed,
            "output": self.output, "compile_ms": self.compile_ms, "run_ms": self.run_ms,
        }


@dataclass
class _Ran:
    status: dict           # {"exit": n} or {"signal": n}; empty when killed before it ended
    output: bytes
    timed_out: bool
    capped: bool
    ms: float


def _top_level_links() -> tuple[list[str], list[tuple[str, str]]]:
    """/bin, /lib, ... as the host has them: merged-/usr symlinks are recreated, real folders bound."""
    binds, links = [], []
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            links.append((name, os.readlink(name)))
        elif os.path.isdir(name):
            binds.append(name)
    return binds, links


def _set_limit(which: int, value: int) -> None:
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass  # not every platform honours every limit (e.g. RLIMIT_AS on macOS)


class Sandbox:
    """Compiles and runs code + tests. Thread-safe: each check uses its own temp dir (and jail)."""

    def __init__(self, limits: Limits | None = None, rustc: str = "rustc", jail: bool | None = None):
        self.limits = limits or Limits()
        found = shutil.which(rustc)
        if not found:
            raise SandboxError(f"{rustc!r} not found on PATH: install Rust (https://rustup.rs) or set PATH")
        try:
            sysroot = subprocess.run([found, "--print", "sysroot"], capture_output=True, text=True,
                                     timeout=60).stdout.strip()
            libdir = subprocess.run([found, "--print", "target-libdir"], capture_output=True, text=True,
                                    timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            raise SandboxError(f"{found} does not run: {e}") from None
        if not sysroot or not Path(libdir).is_dir():
            raise SandboxError(f"{found} printed no usable sysroot ({sysroot!r}, {libdir!r})")
        real = Path(sysroot, "bin", "rustc")  # not the rustup proxy: it would need the caller's environment
        self.rustc = str(real) if real.is_file() else found
        self.sysroot, self.libdir = sysroot, libdir
        self._root = Path(tempfile.mkdtemp(prefix="sleepy-sandbox-"))
        self._uid_lock = threading.Lock()
        self._top = _top_level_links()   # the host's /bin, /lib, ... layout, read once
        self.jail = self._can_jail() if jail is None else jail
        if jail and not self._can_jail():   # asked for explicitly: probed once here, never silently dropped
            raise SandboxError("the jail was asked for but cannot run here (it needs root and Linux namespaces)")

    @property
    def isolation(self) -> str:
        if self.jail:
            return "jail (pid/mount/net/ipc/uts namespaces, tmpfs root, own uid, rlimits)"
        return "rlimits + process group (no jail: not root)"

    def _can_jail(self) -> bool:
        """Root on Linux with working namespaces: try one jail with `true` in it."""
        if not (sys.platform.startswith("linux") and hasattr(os, "geteuid") and os.geteuid() == 0):
            return False
        work = Path(tempfile.mkdtemp(prefix="probe-", dir=self._root))
        try:
            true = shutil.which("true", path="/usr/bin:/bin") or "/bin/true"
            ran = self._jailed(work, [true], env={}, binds=["/usr"], copy_in=[], copy_out=[], size_mb=1,
                               rlimits={}, timeout=20, cap=4096)
            return ran.status == {"exit": 0}
        except (OSError, SandboxError, subprocess.SubprocessError):
            return False
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)

    def __del__(self):  # best effort; explicit close() is preferred
        try:
            self.close()
        except Exception:
            pass

    # ---- checking -------------------------------------------------------------------------------------------

    def check(self, code: str, tests: str, *, screened: bool = True) -> CheckResult:
        """The verdict on `code` against a koan's `tests`. `screened=False` skips the screen: only for testing
        the jail itself, never for a verdict that counts."""
        refusal = screen(code) if screened else None
        if refusal:
            d = Diagnostic("error", "forbidden", refusal.message, refusal.line, None,
                           f"error: {refusal.message}\n --> line {refusal.line}")
            return CheckResult("compile_error", refusal.signature, [d])
        work = Path(tempfile.mkdtemp(prefix="w-", dir=self._root))
        try:
            return self._check_in(work, code, tests)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def check_many(self, items: list[tuple[str, str]], workers: int | None = None) -> list[CheckResult]:
        """Check (code, tests) pairs in parallel, one rustc per core."""
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            return list(pool.map(lambda it: self.check(*it), items))

    def _check_in(self, work: Path, code: str, tests: str) -> CheckResult:
        (work / "main.rs").write_text(combine(code, tests))
        lim = self.limits
        cmd = [self.rustc, "--edition", "2021", "--test", "--error-format=json", "-C", "debuginfo=0",
               "-C", "prefer-dynamic", "-F", "unsafe_code", "-o", "koan", "main.rs"]
        rl = {"AS": lim.compile_memory_mb << 20, "CPU": int(lim.compile_timeout_s) + 1, "FSIZE": 256 << 20,
              "NOFILE": 256, "NPROC": 256, "CORE": 0}
        env = {"PATH": "/usr/bin:/bin", "TMPDIR": "/tmp", "HOME": "/work"}
        if self.jail:
            ran = self._jailed(work, cmd, env=env, binds=["/usr", "/etc/alternatives", "/etc/ld.so.cache",
                                                         "/etc/ld.so.conf", "/etc/ld.so.conf.d", self.sysroot],
                               copy_in=["main.rs"], copy_out=[("koan", 256 << 20)], size_mb=lim.compile_disk_mb,
                               rlimits=rl, timeout=lim.compile_timeout_s, cap=lim.compile_output_bytes)
        else:
            (work / "tmp").mkdir()
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(work / "tmp"), "HOME": str(work)}
            ran = self._bare(work, cmd, env=env, rlimits=rl, timeout=lim.compile_timeout_s,
                             cap=lim.compile_output_bytes)
        compile_ms = ran.ms
        text = ran.output.decode("utf-8", "replace")
        diags = _capped(parse_rustc_json(text))
        if ran.timed_out:
            return CheckResult("timeout", "timeout:compile", diags, compile_ms=compile_ms)
        if ran.capped:
            return CheckResult("crashed", "crashed:compiler_output_limit", diags, compile_ms=compile_ms)
        if ran.status != {"exit": 0} or errors(diags):
            if not errors(diags):  # rustc died without diagnostics (e.g. out of memory)
                return CheckResult("crashed", "crashed:compiler", diags, compile_ms=compile_ms, output=text[-2000:])
            return CheckResult("compile_error", compile_signature(diags), diags, compile_ms=compile_ms)
        if not (work / "koan").is_file():
            return CheckResult("crashed", "crashed:compiler", diags, compile_ms=compile_ms, output=text[-2000:])
        return self._run_tests(work, tests, diags, compile_ms)

    def _run_tests(self, work: Path, tests: str, diags: list[Diagnostic], compile_ms: float) -> CheckResult:
        lim = self.limits
        log = f"{secrets.token_hex(16)}.log"  # chosen after compiling: the candidate cannot know it
        rl = {"AS": lim.memory_mb << 20, "CPU": int(lim.run_timeout_s) + 1, "FSIZE": lim.output_bytes,
              "NOFILE": 64, "CORE": 0}
        env = {"PATH": "/usr/bin:/bin", "RUST_BACKTRACE": "0", "MALLOC_ARENA_MAX": "2", "LD_LIBRARY_PATH": self.libdir}
        if self.jail:
            os.chmod(work, 0o711)  # the binary may be run from /out, the folder neither listed nor written
            os.chmod(work / "koan", 0o755)
            env["HOME"] = "/work"
            ran = self._jailed(work, ["/out/koan", "--test-threads=1", "--nocapture", "--logfile", f"/work/{log}"],
                               env=env, binds=["/usr", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
                                               self.libdir], copy_in=[], copy_out=[(log, 1 << 20)],
                               size_mb=lim.disk_mb, rlimits={**rl, "NPROC": lim.max_processes},
                               timeout=lim.run_timeout_s, cap=lim.output_bytes)
        else:
            env["HOME"] = str(work)
            ran = self._bare(work, ["./koan", "--test-threads=1", "--nocapture", "--logfile", log], env=env,
                             rlimits=rl, timeout=lim.run_timeout_s, cap=lim.output_bytes)
        output = "\n".join(ln for ln in ran.output.decode("utf-8", "replace").split("\n") if ln != _LOGFILE_WARNING)
        results = _read_log(work / log)
        want = test_names(tests)
        npass = sum(results.get(f"tests::{n}") == "ok" for n in want)
        nfail = sum(v == "failed" for v in results.values())
        base = dict(diagnostics=diags, output=output[-8000:], compile_ms=compile_ms, run_ms=ran.ms,
                    tests_passed=npass, tests_failed=nfail)
        sig, rc = ran.status.get("signal"), ran.status.get("exit")
        if ran.timed_out or sig in (signal.SIGXCPU, signal.SIGKILL):
            return CheckResult("timeout", "timeout:tests", **base)
        if ran.capped or sig == signal.SIGXFSZ:
            return CheckResult("crashed", "crashed:output_limit", **base)
        if rc == 0 and want and npass == len(want) and nfail == 0:
            return CheckResult("pass", None, **base)
        if rc == 0:  # exited 0 without every test of the koan seen passing: nothing to believe
            return CheckResult("test_failure", "test_failure:tests_not_run", **base)
        if rc == 101 and nfail:
            return CheckResult("test_failure", panic_signature(output), **base)
        if "memory allocation of" in output or "out of memory" in output.lower():
            return CheckResult("crashed", "crashed:out_of_memory", **base)
        if "has overflowed its stack" in output:
            return CheckResult("crashed", "crashed:stack_overflow", **base)
        if "No space left on device" in output or "StorageFull" in output:
            return CheckResult("crashed", "crashed:disk_limit", **base)
        name = signal.Signals(sig).name.lower() if sig else f"exit_{rc}"
        return CheckResult("crashed", f"crashed:{name}", **base)

    # ---- running one command --------------------------------------------------------------------------------

    def _jailed(self, work: Path, cmd: list[str], *, env: dict, binds: list[str], copy_in: list[str],
                copy_out: list[tuple[str, int]], size_mb: int, rlimits: dict, timeout: float, cap: int) -> _Ran:
        with self._uid_lock:
            uid = _UID_BASE + next(_UIDS) % 1_000_000
        root = work / ".root"
        root.mkdir(mode=0o700, exist_ok=True)
        status = work / ".status"
        status.unlink(missing_ok=True)
        top_binds, links = self._top
        spec = {"root": str(root), "out": str(work), "uid": uid, "size_mb": size_mb, "cmd": cmd, "env": env,
                "binds": top_binds + binds, "links": links, "copy_in": copy_in, "copy_out": copy_out,
                "rlimits": rlimits}
        ran = _run_capped([sys.executable, "-I", "-S", _JAIL, json.dumps(spec)], cwd=work, env={},
                          timeout=timeout, cap=cap)
        try:
            ran.status = json.loads(status.read_text()) if status.is_file() else {}
        except (OSError, ValueError):
            ran.status = {}
        if "error" in ran.status:
            raise SandboxError(f"the jail could not be set up: {ran.status['error']}")
        return ran

    def _bare(self, work: Path, cmd: list[str], *, env: dict, rlimits: dict, timeout: float, cap: int) -> _Ran:
        limits = [(getattr(resource, f"RLIMIT_{k}"), v) for k, v in rlimits.items() if k != "NPROC"]

        def setup() -> None:
            for which, value in limits:
                _set_limit(which, value)

        return _run_capped(cmd, cwd=work, env=env, timeout=timeout, cap=cap, preexec=setup)


def _capped(diags: list[Diagnostic]) -> list[Diagnostic]:
    from dataclasses import replace
    return [replace(d, rendered=d.rendered[:4000], message=d.message[:1000]) for d in diags[:MAX_DIAGNOSTICS]]


def _read_log(path: Path) -> dict[str, str]:
    """libtest's log: `ok tests::name` / `failed tests::name` / `ignored tests::name`, one per test."""
    try:   # a regular file of at most 1 MiB: anything else is no log (and so no pass)
        text = read_regular_file(path, 1 << 20).decode("utf-8", "replace")
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        state, _, name = line.partition(" ")
        if state in ("ok", "failed", "ignored") and name:
            out[name] = state if out.get(name, state) == state else "failed"
    return out


def _run_capped(cmd: list[str], *, cwd: Path, env: dict, timeout: float, cap: int, preexec=None) -> _Ran:
    """Run in a new session with stdout+stderr in one pipe, read at most `cap` bytes before `timeout`; past
    either, kill the whole process group. Nothing of it outlives this call."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec)
    chunks: list[bytes] = []
    total, timed_out, capped = 0, False, False
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                if not sel.select(left):
                    continue
                data = os.read(fd, 1 << 16)
                if not data:
                    break
                chunks.append(data[: max(0, cap - total)])
                total += len(data)
                if total > cap:
                    capped = True
                    break
    finally:
        _kill_group(proc.pid)
        proc.stdout.close()
        rc = proc.wait()
    status = {"signal": -rc} if rc < 0 else {"exit": rc}
    return _Ran(status, b"".join(chunks), timed_out, capped, _ms(t0))


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
