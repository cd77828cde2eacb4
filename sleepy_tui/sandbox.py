"""Check untrusted Rust code: compile it with the real rustc and run its tests, contained.

Every check gets a fresh temp dir. rustc runs with a time and memory limit. The test binary runs in its own
process group with limits on CPU time, address space, processes, open files and output size; when this
process is root (CI, containers) it also gets a private network namespace (no network), a private /tmp,
/var/tmp and /dev/shm (nothing it writes outside its dir survives) and drops to the `nobody` user.
On a timeout the whole process group is killed.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .diagnostics import Diagnostic, compile_signature, errors, parse_rustc_json, panic_signature
from .koans import combine

OUTCOMES = ("pass", "compile_error", "test_failure", "timeout", "crashed")

# Macros that read the host at compile time (files, environment); model code has no business using them.
_FORBIDDEN = re.compile(r"\b(include|include_str|include_bytes|env|option_env)\s*!")
_TEST_RESULT = re.compile(r"test result: (ok|FAILED)\. (\d+) passed; (\d+) failed")
_NOBODY = 65534


class SandboxError(RuntimeError):
    """The sandbox itself cannot work (e.g. no rustc); not an outcome of the checked code."""


@dataclass(frozen=True)
class Limits:
    compile_timeout_s: float = 60.0
    run_timeout_s: float = 10.0
    memory_mb: int = 1024          # address space of the test binary
    compile_memory_mb: int = 4096  # address space of rustc
    output_bytes: int = 1 << 20    # stdout+stderr of the test binary
    max_processes: int = 64        # per sandbox user (only enforced when the binary runs as nobody)


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


def _libc():
    return ctypes.CDLL(None, use_errno=True)


_CLONE_NEWNS, _CLONE_NEWNET = 0x00020000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 2, 4, 16384, 1 << 18


def _can_jail() -> bool:
    """Root on Linux with working namespaces: probe once in a throwaway child."""
    if os.name != "posix" or not hasattr(os, "geteuid") or os.geteuid() != 0 or not Path("/proc/self/ns/net").exists():
        return False
    try:
        r = subprocess.run(["true"], preexec_fn=_jail_setup, timeout=10)
        return r.returncode == 0
    except Exception:
        return False


def _jail_setup() -> None:
    libc = _libc()
    if libc.unshare(_CLONE_NEWNET | _CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    for d in (b"/tmp", b"/var/tmp", b"/dev/shm"):
        if os.path.isdir(d):
            libc.mount(b"tmpfs", d, b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=16m,mode=1777")
    os.setgroups([])
    os.setgid(_NOBODY)
    os.setuid(_NOBODY)


def _set_limit(which: int, value: int) -> None:
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass  # not every platform honours every limit (e.g. RLIMIT_AS on macOS)


class Sandbox:
    """Compiles and runs code + tests. Thread-safe: each check uses its own temp dir."""

    def __init__(self, limits: Limits | None = None, rustc: str = "rustc", jail: bool | None = None):
        self.limits = limits or Limits()
        found = shutil.which(rustc)
        if not found:
            raise SandboxError(f"{rustc!r} not found on PATH: install Rust (https://rustup.rs) or set PATH")
        self.rustc = found
        self.jail = _can_jail() if jail is None else jail
        self._root = Path(tempfile.mkdtemp(prefix="sleepy-sandbox-"))
        os.chmod(self._root, 0o755)
        self._rtlib = self._prepare_rtlib()
        self._lock = threading.Lock()

    @property
    def isolation(self) -> str:
        return "namespaces+nobody+rlimits" if self.jail else "rlimits"

    def _prepare_rtlib(self) -> Path | None:
        """Link the test binary against a copy of libstd's .so: linking is the slowest part of a check."""
        try:
            sysroot = subprocess.run([self.rustc, "--print", "sysroot"], capture_output=True, text=True,
                                     timeout=30).stdout.strip()
            target_libs = list(Path(sysroot, "lib", "rustlib").glob("*/lib/libstd-*.so"))
            if len(target_libs) != 1:
                return None
            rtlib = self._root / "rtlib"
            rtlib.mkdir(mode=0o755)
            dest = rtlib / target_libs[0].name
            try:
                os.link(target_libs[0], dest)
            except OSError:
                shutil.copy2(target_libs[0], dest)
            os.chmod(dest, 0o755)
            return rtlib
        except (OSError, subprocess.SubprocessError):
            return None

    def close(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)

    def __del__(self):  # best effort; explicit close() is preferred
        try:
            self.close()
        except Exception:
            pass

    # ---- checking -------------------------------------------------------------------------------------------

    def check(self, code: str, tests: str) -> CheckResult:
        forbidden = _FORBIDDEN.search(code)
        if forbidden:
            msg = f"use of `{forbidden.group(1)}!` is not allowed in the sandbox (it reads the host at compile time)"
            line = code.count("\n", 0, forbidden.start()) + 1
            d = Diagnostic("error", "forbidden", msg, line, None, f"error: {msg}\n --> line {line}")
            return CheckResult("compile_error", f"forbidden:{forbidden.group(1)}", [d])
        work = Path(tempfile.mkdtemp(prefix="w-", dir=self._root))
        try:
            return self._check_in(work, combine(code, tests))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def check_many(self, items: list[tuple[str, str]], workers: int | None = None) -> list[CheckResult]:
        """Check (code, tests) pairs in parallel, one rustc per core."""
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            return list(pool.map(lambda it: self.check(*it), items))

    def _check_in(self, work: Path, source: str) -> CheckResult:
        src = work / "main.rs"
        src.write_text(source)
        cmd = [self.rustc, "--edition", "2021", "--test", "--error-format=json", "-C", "debuginfo=0",
               "-o", str(work / "koan"), str(src)]
        if self._rtlib:
            cmd[1:1] = ["-C", "prefer-dynamic"]
        lim = self.limits
        t0 = time.perf_counter()
        try:
            proc = _run_group(cmd, cwd=work, timeout=lim.compile_timeout_s,
                              preexec=lambda: _set_limit(resource.RLIMIT_AS, lim.compile_memory_mb << 20))
        except subprocess.TimeoutExpired:
            return CheckResult("timeout", "timeout:compile", compile_ms=_ms(t0))
        compile_ms = _ms(t0)
        diags = parse_rustc_json(proc.stderr.decode("utf-8", "replace"))
        if proc.returncode != 0 or errors(diags):
            if not errors(diags):  # rustc died without diagnostics (e.g. out of memory)
                return CheckResult("crashed", "crashed:compiler", diags, compile_ms=compile_ms,
                                   output=proc.stderr.decode("utf-8", "replace")[-2000:])
            return CheckResult("compile_error", compile_signature(diags), diags, compile_ms=compile_ms)
        return self._run_tests(work, diags, compile_ms)

    def _run_tests(self, work: Path, diags: list[Diagnostic], compile_ms: float) -> CheckResult:
        lim = self.limits
        if self.jail:
            os.chown(work, _NOBODY, _NOBODY)
        env = {"PATH": "/usr/bin:/bin", "RUST_BACKTRACE": "0", "MALLOC_ARENA_MAX": "2", "HOME": "/nonexistent"}
        if self._rtlib:
            env["LD_LIBRARY_PATH"] = "../rtlib"  # relative: the jail hides the absolute path under /tmp
        jail = self.jail

        def setup() -> None:
            if jail:
                _jail_setup()
            _set_limit(resource.RLIMIT_AS, lim.memory_mb << 20)
            _set_limit(resource.RLIMIT_CPU, int(lim.run_timeout_s) + 1)
            _set_limit(resource.RLIMIT_FSIZE, lim.output_bytes)
            _set_limit(resource.RLIMIT_CORE, 0)
            _set_limit(resource.RLIMIT_NOFILE, 64)
            if jail:
                _set_limit(resource.RLIMIT_NPROC, lim.max_processes)

        out_path = work / "output.txt"
        t0 = time.perf_counter()
        with open(out_path, "wb") as out:
            try:
                rc = _run_group(["./koan", "--test-threads=1", "--nocapture"], cwd=work, timeout=lim.run_timeout_s, preexec=setup,
                                env=env, stdout=out).returncode
                timed_out = False
            except subprocess.TimeoutExpired:
                rc, timed_out = None, True
        run_ms = _ms(t0)
        with open(out_path, "rb") as f:
            output = f.read(lim.output_bytes).decode("utf-8", "replace")
        base = dict(diagnostics=diags, output=output[-8000:], compile_ms=compile_ms, run_ms=run_ms)
        m = _TEST_RESULT.search(output)
        npass, nfail = (int(m.group(2)), int(m.group(3))) if m else (0, 0)
        base.update(tests_passed=npass, tests_failed=nfail)
        if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL):
            return CheckResult("timeout", "timeout:tests", **base)
        if rc == -signal.SIGXFSZ or out_path.stat().st_size >= lim.output_bytes:
            return CheckResult("crashed", "crashed:output_limit", **base)
        if rc == 0 and m and npass > 0 and nfail == 0:
            return CheckResult("pass", None, **base)
        if rc == 0 and m and npass == 0:
            return CheckResult("test_failure", "test_failure:no_tests_ran", **base)
        if rc == 101 and m:
            return CheckResult("test_failure", panic_signature(output), **base)
        if "memory allocation of" in output or "out of memory" in output.lower():
            return CheckResult("crashed", "crashed:out_of_memory", **base)
        if "has overflowed its stack" in output:
            return CheckResult("crashed", "crashed:stack_overflow", **base)
        name = signal.Signals(-rc).name.lower() if rc is not None and rc < 0 else f"exit_{rc}"
        return CheckResult("crashed", f"crashed:{name}", **base)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


def _run_group(cmd, *, cwd, timeout, preexec=None, env=None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """Run in a new process group; on timeout kill the whole group, then re-raise TimeoutExpired."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.PIPE if stdout is subprocess.PIPE else subprocess.STDOUT,
                            start_new_session=True, preexec_fn=preexec, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        raise
    finally:
        _kill_group(proc.pid)  # leftovers (forked children) never outlive a check
    return subprocess.CompletedProcess(cmd, proc.returncode, out or b"", err or b"")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def check_koan_solution(sandbox: Sandbox, koan) -> CheckResult:
    return sandbox.check(koan.solution, koan.tests)
