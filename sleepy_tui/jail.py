"""The built-in jail: run one command in fresh namespaces on a read-only view of the host, as its own user.

Run as a script by the sandbox (`python -I -S jail.py SPEC_JSON`, as root): it imports nothing of the
package, so the jailed side costs a bare interpreter start. What the command gets:

- new PID, mount, network, IPC and UTS namespaces. The jail's init is PID 1 of its PID namespace, so when
  it exits (after the command) or is killed (the sandbox kills it on a timeout, and it dies with its parent),
  the kernel kills every process left in it: daemons, double forks and new sessions included. A check sees
  only its own processes (a fresh /proc) and can signal no other check's.
- a root filesystem that is a small tmpfs (its size is the total the command can write, /tmp included) with
  the host paths it needs bound read-only and nosuid (/usr, the Rust toolchain, a few device nodes); no
  /home, /root, /run or /var, so no host Unix socket is reachable, and the network namespace has no network.
- a user id of its own for each check (no other process runs as it), no supplementary groups, no new
  privileges, rlimits on address space, CPU time, file size, open files and processes, and exactly the
  environment the spec names.
- /out, the check's host folder: the command may read and run files there (mode 0711) but only init writes
  into it: it copies the named results out of the tmpfs after the command ended, and writes the command's
  status (exit code or signal) into /out/.status, where the command cannot forge it.
"""

import ctypes
import json
import os
import resource
import signal
import stat
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = (
    0x00020000, 0x04000000, 0x08000000, 0x20000000, 0x40000000)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
RLIMITS = {"AS": resource.RLIMIT_AS, "CPU": resource.RLIMIT_CPU, "FSIZE": resource.RLIMIT_FSIZE,
           "NOFILE": resource.RLIMIT_NOFILE, "NPROC": resource.RLIMIT_NPROC, "CORE": resource.RLIMIT_CORE}

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, dst, fstype, flags, data=None) -> None:
    enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    _check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), f"mount {dst}")


def _bind(root: str, src: str, writable: bool = False, dev: bool = False, noexec: bool = False,
          at: str | None = None) -> None:
    dst = root + (at or src)
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    _mount(src, dst, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (0 if writable else MS_RDONLY) | (0 if dev else MS_NODEV)
    _mount(None, dst, None, flags | (MS_NOEXEC if noexec else 0))


def _copy(src: str, dst: str, limit: int, uid: int | None = None, mode: int = 0o600) -> bool:
    """Copy a regular file (never through a link), at most `limit` bytes; False when src is not one."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return False
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            while chunk := os.read(fd, 1 << 20):
                os.write(out, chunk)
            if uid is not None:
                os.fchown(out, uid, uid)
        finally:
            os.close(out)
        return True
    finally:
        os.close(fd)


def _init(spec: dict) -> None:
    """PID 1 of the new namespaces: build the filesystem, run the command, copy results out, report."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    status_path = os.path.join(spec["out"], ".status")  # the host path, until the chroot
    try:
        root, uid = spec["root"], spec["uid"]
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={spec['size_mb']}m,nr_inodes={spec.get('inodes', 2048)},mode=755")
        for src in spec["binds"]:
            if os.path.exists(src):
                _bind(root, src)
        for dev in ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"):
            _bind(root, dev, writable=True, dev=True, noexec=True)
        for name, target in spec.get("links", []):
            os.symlink(target, root + name)
        os.makedirs(root + "/proc")
        _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        os.makedirs(root + "/tmp")
        os.chmod(root + "/tmp", 0o1777)
        os.makedirs(root + "/work")
        os.chown(root + "/work", uid, uid)
        os.chmod(root + "/work", 0o700)
        _bind(root, spec["out"], writable=True, at="/out")
        for name in spec.get("copy_in", []):
            if not _copy(os.path.join(spec["out"], name), root + "/work/" + name, 64 << 20, uid, 0o700):
                raise OSError(f"cannot copy {name} into the jail")
        os.chroot(root)
        status_path = "/out/.status"
        os.chdir("/work")
    except Exception as e:  # the jail could not be built: say so where the sandbox reads it
        _write_status(status_path, {"error": f"{type(e).__name__}: {e}"})
        os._exit(0)
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            for name, value in spec["rlimits"].items():
                resource.setrlimit(RLIMITS[name], (value, value))
            os.execve(spec["cmd"][0], spec["cmd"], spec["env"])
        finally:
            os._exit(127)
    result: dict = {}
    while True:  # reap everything re-parented to init until the command itself is done
        try:
            got, wstatus = os.wait()
        except ChildProcessError:
            break
        if got == pid:
            result = ({"signal": os.WTERMSIG(wstatus)} if os.WIFSIGNALED(wstatus)
                      else {"exit": os.WEXITSTATUS(wstatus)})
            break
    for name, limit in spec.get("copy_out", []):
        _copy("/work/" + name, "/out/" + name, limit)
    _write_status("/out/.status", result)
    os._exit(0)  # the kernel now kills whatever the command left running in this PID namespace


def _write_status(path: str, result: dict) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.write(fd, json.dumps(result).encode())
    os.close(fd)


def main() -> None:
    spec = json.loads(sys.argv[1])
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    pid = os.fork()
    if pid == 0:
        _init(spec)
    # The outer process holds nothing open, so the sandbox sees end-of-output when the jail's last process is gone.
    os.closerange(0, 1 << 16)
    _, wstatus = os.waitpid(pid, 0)
    os._exit(os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else 1)


if __name__ == "__main__":
    main()
