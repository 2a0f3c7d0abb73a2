"""The sandboxed worker process (run as a script by reftflow.graders.pool; standard library only).

It reads one JSON line of setup, then requests, one JSON line each, from its stdin pipe and answers with
one JSON line per task. Before any grader or program code runs it:

1. pre-imports common pure modules (math, re, json, statistics, fractions, ...), so code can use them even
   after privileges are dropped;
2. sets resource limits: RLIMIT_AS (memory), RLIMIT_CPU (a lifetime cap; the per-task wall limit is
   SIGALRM here plus a kill from the parent), RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_NPROC = 0 (no new
   processes or threads), RLIMIT_CORE = 0;
3. when started as root, drops to the `nobody` user (so RLIMIT_NPROC applies, the parent cannot be
   signalled and the project tree cannot be written even if layer 4 is bypassed);
4. installs an audit hook (PEP 578) that refuses sockets, subprocesses, fork/exec/spawn, signals to other
   processes, ctypes/cffi and similar imports, frame and gc introspection, code-object construction,
   writes outside the scratch directory, and reads outside the scratch directory and the Python install.

Audit hooks are not a complete sandbox (the CPython docs say so): layers 2, 3 and the parent's
process-group kill are the backstop. The parent never unpickles anything from here: replies are JSON.
"""

import builtins
import json
import os
import resource
import signal
import sys
import sysconfig

PREIMPORT = (
    "math cmath re json string statistics fractions decimal collections collections.abc itertools functools "
    "operator random datetime difflib unicodedata textwrap heapq bisect typing dataclasses enum copy numbers "
    "time ast hashlib base64 struct array io"
).split()

BLOCKED_EVENTS = frozenset(
    """os.system os.fork os.forkpty os.kill os.killpg os.exec os.spawn os.posix_spawn os.startfile os.chdir os.fchdir
    os.chroot os.link os.symlink os.chown os.lchown os.fchown os.mkfifo os.mknod subprocess.Popen signal.pthread_kill
    sys._getframe sys._current_frames sys._current_exceptions sys.settrace sys.setprofile sys.addaudithook
    gc.get_objects gc.get_referrers gc.get_referents code.__new__ function.__new__ marshal.load marshal.loads
    mmap.__new__ setopencodehook resource.setrlimit resource.prlimit os.add_dll_directory urllib.Request
    http.client.connect ftplib.connect smtplib.connect poplib.connect imaplib.open nntplib.connect
    telnetlib.Telnet.open webbrowser.open sqlite3.connect sqlite3.connect/handle sqlite3.enable_load_extension
    sqlite3.load_extension shutil.chown pty.spawn""".split()
)
BLOCKED_PREFIXES = ("socket.", "ctypes.", "_ctypes.", "cffi.", "_winapi.", "winreg.", "msvcrt.")
BLOCKED_IMPORTS = frozenset(
    """ctypes _ctypes cffi _cffi_backend _posixsubprocess subprocess multiprocessing _multiprocessing socket _socket
    ssl _ssl sqlite3 _sqlite3 dbm _dbm _gdbm mmap pty _posixshmem _testcapi _testinternalcapi _testbuffer
    _testmultiphase _testimportmultiple _xxsubinterpreters _xxinterpchannels _xxtestfuzz faulthandler
    tracemalloc _tracemalloc _lsprof cProfile profile pdb bdb""".split()
)
FRAME_ATTRS = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame"))
WRITE_PATH_EVENTS = frozenset(("os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.truncate", "os.chmod",
                               "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
                               "shutil.copytree", "shutil.move", "shutil.make_archive", "shutil.unpack_archive"))
LIST_PATH_EVENTS = frozenset(("os.listdir", "os.scandir", "glob.glob", "glob.glob/2", "os.listxattr",
                              "os.getxattr", "os.setxattr", "os.removexattr"))
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
NOBODY = 65534


class Timeout(BaseException):
    """BaseException, so that graders' `except Exception` cannot swallow the time limit."""


def make_resolver(cwd):
    """A realpath built from functions captured now: code that monkeypatches os.path later cannot fool it."""
    lstat, readlink = os.lstat, os.readlink

    def resolve(path):
        if not path.startswith("/"):
            path = cwd + "/" + path
        stack = path.split("/")[::-1]
        parts = []
        hops = 0
        while stack:
            part = stack.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            candidate = "/" + "/".join(parts + [part])
            try:
                mode = lstat(candidate).st_mode
            except OSError:
                parts.append(part)
                continue
            if mode & 0o170000 == 0o120000:  # a symlink: follow it
                hops += 1
                if hops > 40:
                    raise PermissionError("sandbox: too many symlinks")
                target = readlink(candidate)
                if target.startswith("/"):
                    parts = []
                stack.extend(target.split("/")[::-1])
            else:
                parts.append(part)
        return "/" + "/".join(parts)

    return resolve


def make_hook(scratch, read_roots, read_files):
    resolve = make_resolver(scratch)
    fsdecode, fspath = os.fsdecode, os.fspath
    write_flags = WRITE_FLAGS
    scratch_prefix = scratch.rstrip("/") + "/"
    read_prefixes = tuple(r.rstrip("/") + "/" for r in read_roots) + (scratch_prefix,)
    read_exact = frozenset(read_files) | frozenset(r.rstrip("/") for r in read_roots) | {scratch.rstrip("/")}
    blocked_events, blocked_prefixes, blocked_imports = BLOCKED_EVENTS, BLOCKED_PREFIXES, BLOCKED_IMPORTS
    frame_attrs, write_events, list_events = FRAME_ATTRS, WRITE_PATH_EVENTS, LIST_PATH_EVENTS

    def as_path(event, value):
        if isinstance(value, int) or value is None:
            raise PermissionError(f"sandbox: {event} on a file descriptor is not allowed")
        return resolve(fsdecode(fspath(value)))

    def can_write(path):
        return path.startswith(scratch_prefix)

    def can_read(path):
        return path in read_exact or path.startswith(read_prefixes)

    def hook(event, args):
        if event in blocked_events or event.startswith(blocked_prefixes):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            if path is None:
                return
            real = as_path("open", path)
            writing = (mode is not None and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            if writing:
                if not can_write(real):
                    raise PermissionError(f"sandbox: writing {real} is not allowed (only the scratch directory)")
            elif not can_read(real):
                raise PermissionError(f"sandbox: reading {real} is not allowed")
        elif event == "import":
            if args[0].partition(".")[0] in blocked_imports:
                raise ImportError(f"sandbox: import of {args[0]} is not allowed")
        elif event == "object.__getattr__":
            if args[1] in frame_attrs:
                raise PermissionError(f"sandbox: access to {args[1]} is not allowed")
        elif event in write_events:
            for value in args[:2]:
                if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
                    if not can_write(as_path(event, value)):
                        raise PermissionError(f"sandbox: {event} outside the scratch directory is not allowed")
        elif event in list_events:
            target = args[0] if args and args[0] is not None else "."
            if not can_read(as_path(event, target)):
                raise PermissionError(f"sandbox: {event} of {target!r} is not allowed")

    return hook


class Sink:
    """Where graders' print() goes: nowhere (the protocol has its own descriptor)."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


def set_limits(setup):
    mib = 1024 * 1024
    cpu = int(setup["cpu_s"])
    limits = [
        (resource.RLIMIT_AS, int(setup["memory_mb"]) * mib),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, int(setup["fsize_mb"]) * mib),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_NPROC, 0),
        (resource.RLIMIT_CORE, 0),
    ]
    for which, value in limits:
        hard = value + 5 if which == resource.RLIMIT_CPU else value  # SIGXCPU first, SIGKILL 5 s later
        resource.setrlimit(which, (value, hard))


def read_roots():
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.add("/usr/share/zoneinfo")
    resolve = make_resolver("/")
    return sorted({resolve(os.path.abspath(r)) for r in roots})


def number_or_text(value):
    """A program's answer as JSON: a float when it is a number, else its text (the parent parses it)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return str(value)
    try:
        return float(value)  # float, Fraction, Decimal, numpy scalars
    except (TypeError, ValueError, OverflowError):
        text = repr(value)
        return text[:200]


def describe(e):
    try:
        msg = str(e)
    except Exception:
        msg = ""
    text = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    text = " ".join(text.split())
    return text[:300]


def main():
    """Serve grading requests on the protocol descriptors until stdin closes or a limit is near.

    One long function on purpose: the protocol descriptors, `send` and the request loop live in its
    locals, bound before the audit hook is installed, not in module globals that grader code could
    reach through `sys.modules["__main__"]`.
    """
    # the protocol gets private descriptors; 0, 1 and 2 become /dev/null so print() and os.write(1) go nowhere
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    inp = os.fdopen(proto_in, "rb")
    setup = json.loads(inp.readline())
    write = os.write

    def send(obj):
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[write(proto_out, data):]

    for name in PREIMPORT:
        __import__(name)
    scratch = setup["scratch"]
    roots = read_roots()
    os.chdir(scratch)
    sys.dont_write_bytecode = True
    # importlib loads cached bytecode with marshal.loads, which the hook refuses (crafted code objects are
    # a way out of the interpreter): an empty cache prefix makes later imports compile from source instead
    sys.pycache_prefix = os.path.join(scratch, ".pycache")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG instead of killing us

    def on_alarm(signum, frame):
        raise Timeout()

    signal.signal(signal.SIGALRM, on_alarm)
    try:
        set_limits(setup)
        if os.geteuid() == 0 and setup.get("drop_privileges", True):
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
    except OSError as e:
        send({"fatal": f"cannot apply sandbox limits: {describe(e)}"})
        return
    sys.stdout = sys.stderr = Sink()
    cpu_cap = float(setup["cpu_s"])
    setitimer, ITIMER_REAL, getrusage, RUSAGE_SELF = signal.setitimer, signal.ITIMER_REAL, resource.getrusage, resource.RUSAGE_SELF
    sys.addaudithook(make_hook(scratch, roots, ("/dev/null", "/dev/urandom", "/dev/random")))
    send({"ready": True, "pid": os.getpid(), "uid": os.getuid()})

    graders = {}  # key -> ("python", grade function) or ("program", entry point name)

    def run_task(kind, target, task, timeout):
        """(reply, recycle): recycle when the process may be in a bad state (time or memory limit hit)."""
        try:
            setitimer(ITIMER_REAL, timeout)
            try:
                if kind == "python":
                    value = target(task["sample"], task["item"])
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        if hasattr(type(value), "__float__") and not isinstance(value, (str, bytes, bool)):
                            value = float(value)
                        else:
                            return {"ok": False, "error": f"grade() returned {type(value).__name__}, not a number"}, False
                    return {"ok": True, "value": float(value)}, False
                namespace = {"__name__": "__program__", "__builtins__": builtins}
                exec(compile(task["code"], "<program>", "exec"), namespace)
                entry = namespace.get(target)
                if not callable(entry):
                    return {"ok": False, "error": f"the program defines no {target}()"}, False
                return {"ok": True, "value": number_or_text(entry())}, False
            finally:
                setitimer(ITIMER_REAL, 0)
        except Timeout:
            return {"ok": False, "error": f"timed out after {timeout:g} s"}, True
        except MemoryError:
            return {"ok": False, "error": f"MemoryError: exceeded the memory limit ({setup['memory_mb']} MiB)"}, True
        except RecursionError as e:
            return {"ok": False, "error": describe(e)}, False
        except BaseException as e:  # SystemExit, KeyboardInterrupt and everything a grader may raise
            return {"ok": False, "error": describe(e)}, isinstance(e, (SystemExit, KeyboardInterrupt))

    while True:
        line = inp.readline()
        if not line:
            return
        request = json.loads(line)
        op = request["op"]
        timeout = float(request["timeout"])
        if op == "load":
            if request["kind"] == "program":
                graders[request["key"]] = ("program", request["entry"])
                send({"ok": True})
                continue
            namespace = {"__name__": "__grader__", "__builtins__": builtins}
            reply = {"ok": True}
            try:
                setitimer(ITIMER_REAL, timeout)
                try:
                    exec(compile(request["source"], "<grader>", "exec"), namespace)
                finally:
                    setitimer(ITIMER_REAL, 0)
                if not callable(namespace.get("grade")):
                    reply = {"ok": False, "error": "the source defines no grade(sample, item)"}
            except Timeout:
                reply = {"ok": False, "error": f"loading the source timed out after {timeout:g} s"}
            except BaseException as e:
                reply = {"ok": False, "error": f"loading the source failed: {describe(e)}"}
            if reply["ok"]:
                graders[request["key"]] = ("python", namespace["grade"])
            send(reply)
            continue
        kind, target = graders[request["key"]]
        for task in request["tasks"]:
            reply, recycle = run_task(kind, target, task, timeout)
            used = getrusage(RUSAGE_SELF)
            if used.ru_utime + used.ru_stime > cpu_cap - 2 * timeout - 2:
                recycle = True  # retire before RLIMIT_CPU kills us in the middle of someone's task
            if recycle:
                reply["recycle"] = True
            send(reply)
            if recycle:
                return


if __name__ == "__main__":
    main()
