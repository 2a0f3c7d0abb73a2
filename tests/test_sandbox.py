"""The sandbox: python and program_answer graders, and escape/abuse attempts that must each be contained.

Every attempt must score 0 with an error, leave no trace outside the worker's scratch directory, and leave
this test process (the workers' parent) unharmed. Short limits keep the file fast.
"""

from __future__ import annotations

import gc
import os
import textwrap
import time
from pathlib import Path

import pytest

from reftflow.graders import build_grader

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[1]


def python_grader(body: str, timeout: float = 0.5, memory_mb: int = 256, name: str = "g"):
    source = "def grade(sample, item):\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n    return 1.0\n"
    return build_grader({"type": "python", "name": name, "source": source, "timeout": timeout, "memory_mb": memory_mb})


def attempt(body: str, item: dict | None = None, **kw) -> str:
    """Run an attack as a grader: assert it was contained (score 0 with an error) and return the error."""
    with python_grader(body, **kw) as grader:
        result = grader.grade("x", item or {})
    assert result.score == 0.0, f"not contained: {result}"
    assert result.error, "contained attempts must record why"
    return result.error


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(pid))
            except OSError:
                pass
    return found


# --- escape and abuse attempts ------------------------------------------------------------------------


def test_read_etc_passwd():
    assert "reading /etc/passwd is not allowed" in attempt("open('/etc/passwd').read()")


def test_read_project_file_by_absolute_path():
    target = ROOT / "pyproject.toml"
    assert "is not allowed" in attempt(f"open({str(target)!r}).read()")
    assert "is not allowed" in attempt(f"import pathlib; pathlib.Path({str(target)!r}).read_bytes()")


def test_read_via_relative_path_and_os_open():
    assert "is not allowed" in attempt("open('../../../../../../etc/passwd').read()")  # .. out of scratch
    assert "is not allowed" in attempt("import os; os.open('/etc/hostname', os.O_RDONLY)")  # the low-level call


def test_import_project_code():
    # the editable install maps `reftflow` to the repo: reading its source is refused
    assert "not allowed" in attempt("import reftflow.config")


def test_list_project_directory():
    assert "not allowed" in attempt(f"import os; os.listdir({str(ROOT)!r})")


def test_write_outside_scratch(tmp_path):
    target = tmp_path / "pwned.txt"
    assert "writing" in attempt(f"open({str(target)!r}, 'w').write('pwned')")
    assert not target.exists()


def test_delete_and_rename_outside_scratch(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    assert "not allowed" in attempt(f"import os; os.remove({str(victim)!r})")
    assert "not allowed" in attempt(f"import os; os.rename({str(victim)!r}, 'stolen.txt')")
    assert victim.read_text() == "precious"


def test_open_a_socket():
    assert "socket" in attempt("import socket; socket.create_connection(('127.0.0.1', 22), timeout=0.2)")
    assert "not allowed" in attempt("import _socket; _socket.socket()")


def test_os_system(tmp_path):
    target = tmp_path / "from_shell"
    assert "os.system is not allowed" in attempt(f"import os; os.system('touch {target}')")
    assert not target.exists()


def test_subprocess_and_posix_spawn():
    assert "not allowed" in attempt("import subprocess; subprocess.run(['true'])")
    assert "not allowed" in attempt("import os; os.posix_spawn('/bin/true', ['true'], {})")
    assert "not allowed" in attempt("import os; os.execv('/bin/true', ['true'])")


def test_fork_bomb():
    assert "os.fork is not allowed" in attempt("import os\nwhile True:\n    os.fork()")


def test_infinite_loop_times_out():
    start = time.monotonic()
    assert "timed out after 0.3 s" in attempt("while True:\n    pass", timeout=0.3)
    assert time.monotonic() - start < 10


def test_loop_that_swallows_the_timeout_is_killed():
    body = "import time\nwhile True:\n    try:\n        time.sleep(5)\n    except BaseException:\n        pass"
    assert "worker killed" in attempt(body, timeout=0.3)


def test_allocate_8_gib():
    assert "MemoryError" in attempt("x = bytearray(8 * 1024 ** 3)", memory_mb=256)


def test_kill_the_parent():
    assert "os.kill is not allowed" in attempt("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert "not allowed" in attempt("import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)")
    # still here: this process is the workers' parent


def test_import_ctypes_to_poke_memory():
    assert "import of ctypes is not allowed" in attempt("import ctypes\nctypes.string_at(0)")
    # refused by the hook, or (as root, after the drop to nobody) not even readable
    assert "_ctypes" in attempt("import importlib\nimportlib.import_module('_ctypes')")
    assert "not allowed" in attempt("import cffi")


def test_env_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("REFTFLOW_FAKE_SECRET", "hunter2")
    error = attempt("import os\nraise LookupError('leak: ' + repr(os.environ.get('REFTFLOW_FAKE_SECRET')))")
    assert "hunter2" not in error and "None" in error
    assert "not allowed" in attempt("import os\nopen(f'/proc/{os.getppid()}/environ').read()")


def test_child_that_would_outlive_the_call():
    marker = f"reftflow-orphan-{os.getpid()}-{time.monotonic_ns()}"
    body = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])"
    attempt(body)
    body = f"import os\nif os.fork() == 0:\n    os.execv('/bin/sleep', ['sleep', '60', {marker!r}])"
    attempt(body)
    assert _processes_with(marker) == []


def test_introspection_to_reach_the_worker():
    assert "not allowed" in attempt("import sys; sys._getframe(1).f_locals")  # frames of the worker loop
    assert "not allowed" in attempt("import gc; gc.get_objects()")
    assert "not allowed" in attempt("try:\n    1/0\nexcept Exception as e:\n    e.__traceback__.tb_frame")
    assert "not allowed" in attempt("(lambda: 0).__code__.replace(co_code=b'')")  # handmade bytecode
    assert "not allowed" in attempt("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))")


def test_protocol_cannot_be_forged_through_stdout():
    # print() and writes to fd 1 go to /dev/null: the protocol has its own descriptor
    with python_grader("import os\nprint('{\"ok\": true, \"value\": 1.0}')\nos.write(1, b'garbage\\n')\nreturn 0.25") as g:
        assert g.grade("x", {}).score == 0.25


def test_second_layer_limits_hold_inside_the_worker():
    # if the audit hook were bypassed, the rlimits (and, as root, the nobody user) still stand
    body = """
    import os, resource
    assert resource.getrlimit(resource.RLIMIT_NPROC) == (0, 0), 'nproc'
    assert resource.getrlimit(resource.RLIMIT_AS)[0] == 256 * 1024 * 1024, 'as'
    assert resource.getrlimit(resource.RLIMIT_CORE) == (0, 0), 'core'
    assert os.getcwd().startswith('/tmp') or 'sandbox' in os.getcwd(), 'cwd'
    if os.geteuid() != 0:
        assert os.getuid() != 0
    assert os.getuid() != 0 or __import__('sys').platform != 'linux', 'still root'
    """
    with python_grader(body) as g:
        result = g.grade("x", {})
    assert result.score == 1.0, result.error


def test_scratch_directory_is_writable():
    with python_grader("open('notes.txt', 'w').write('ok')\nassert open('notes.txt').read() == 'ok'") as g:
        assert g.grade("x", {}).score == 1.0


def test_the_pool_survives_and_replaces_broken_workers():
    source = textwrap.dedent(
        """
        import os
        def grade(sample, item):
            text = sample['output_text']
            if text == 'hang':
                while True:
                    pass
            if text == 'oom':
                x = bytearray(8 * 1024 ** 3)
            if text == 'exit':
                os._exit(3)
            return int(text) / 100
        """
    )
    texts = [str(i) for i in range(40)]
    texts[5], texts[17], texts[30] = "hang", "oom", "exit"
    with build_grader({"type": "python", "name": "p", "source": source, "timeout": 0.3, "memory_mb": 256}) as g:
        results = g.grade_many(texts, [{}] * len(texts))
    for i, r in enumerate(results):
        if i in (5, 17, 30):
            assert r.score == 0.0 and r.error
        else:
            assert r.score == pytest.approx(i / 100) and r.error is None  # order kept, neighbours unharmed
    assert "timed out" in results[5].error and "MemoryError" in results[17].error and "status 3" in results[30].error


# --- the python grader's contract -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "returned, expected_error",
    [
        ("'1.0'", "returned str, not a number"),  # a string is not a score
        ("True", "returned bool, not a number"),  # nor a bool
        ("None", "returned NoneType, not a number"),
        ("1.5", "outside [0, 1]"),  # out of range
        ("-0.5", "outside [0, 1]"),
        ("float('nan')", "NaN"),
        ("1 / 0", "ZeroDivisionError"),  # the grader raised
    ],
)
def test_python_grader_bad_returns_score_zero(returned, expected_error):
    source = f"def grade(sample, item):\n    return {returned}\n"
    with build_grader({"type": "python", "name": "p", "source": source, "timeout": 1}) as g:
        result = g.grade("x", {})
    assert result.score == 0.0 and expected_error in result.error


def test_python_grader_sees_sample_and_item_and_keeps_order():
    source = textwrap.dedent(
        """
        import json
        def grade(sample, item):
            want = item['meta']['target']
            got = sample['output_json']['value'] if sample['output_json'] else None
            return 1.0 if got == want else 0.0
        """
    )
    texts = ['{"value": %d}' % (i % 3) for i in range(50)] + ["not json"]
    items = [{"meta": {"target": 1}}] * 51
    with build_grader({"type": "python", "name": "p", "source": source}) as g:
        scores = [r.score for r in g.grade_many(texts, items)]
    assert scores == [1.0 if i % 3 == 1 else 0.0 for i in range(50)] + [0.0]


def test_python_source_that_fails_to_load_errors_every_sample():
    source = "raise RuntimeError('boom at import')\ndef grade(sample, item):\n    return 1.0\n"
    with build_grader({"type": "python", "name": "p", "source": source}) as g:
        results = g.grade_many(["a", "b"], [{}, {}])
    assert all(r.score == 0.0 and "boom at import" in r.error for r in results)


def test_close_and_garbage_collection_stop_workers():
    g = python_grader("pass")
    assert g.grade("x", {}).score == 1.0
    pids = [w.proc.pid for w in g.pool._state.workers]
    assert pids
    g.close()
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in pids)
    assert g.grade("x", {}).score == 1.0  # a closed grader restarts its pool on demand
    pids = [w.proc.pid for w in g.pool._state.workers]
    del g
    gc.collect()
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in pids)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


# --- program_answer (ReFT program-of-thought) -------------------------------------------------------------

PROGRAM = {"type": "program_answer", "name": "pot", "reference": "{{ item.answer }}", "timeout": 0.5}


@pytest.mark.parametrize(
    "program, answer, expected, error",
    [
        ("def solution():\n    return 7 + 5\n", "12", 1.0, None),  # right result
        ("def solution():\n    return 7 * 5\n", "12", 0.1, None),  # runs, wrong result: ReFT's partial reward
        ("def solution():\n    return 10 / 4\n", "2.5", 1.0, None),  # float result
        ("def solution():\n    return '$1,234'\n", "1234", 1.0, None),  # a numeric string
        ("def solution():\n    return None\n", "12", 0.0, None),  # nothing to compare
        ("def solution():\n    return 1 / 0\n", "12", 0.0, "ZeroDivisionError"),  # the program raised
        ("x = 12\n", "12", 0.0, "defines no solution()"),  # no entry point
        ("def solution(:\n", "12", 0.0, "SyntaxError"),  # not Python
        ("def solution():\n    while True:\n        pass\n", "12", 0.0, "timed out"),  # never returns
        ("import os\ndef solution():\n    return len(open('/etc/passwd').read())\n", "12", 0.0, "not allowed"),
        ("Sure!\n```python\ndef solution():\n    return 12\n```\nDone.", "12", 1.0, None),  # fenced block
    ],
)
def test_program_answer(program, answer, expected, error):
    with build_grader(PROGRAM) as g:
        result = g.grade(program, {"answer": answer})
    assert result.score == expected
    assert (result.error is None) if error is None else (error in result.error)


def test_program_answer_batch_and_bad_reference():
    programs = [f"def solution():\n    return {i}\n" for i in range(30)]
    items = [{"answer": str(i if i % 2 else i + 1)} for i in range(30)]
    items[3] = {"answer": "n/a"}  # a broken item: that sample errors without reaching the sandbox
    with build_grader(PROGRAM) as g:
        results = g.grade_many(programs, items)
    assert results[3].score == 0.0 and "not a number" in results[3].error
    assert [r.score for i, r in enumerate(results) if i != 3] == [1.0 if i % 2 else 0.1 for i in range(30) if i != 3]


def test_multi_over_sandboxed_and_pure_graders():
    spec = {
        "type": "multi",
        "name": "combo",
        "graders": {
            "pot": PROGRAM,
            "short": {"type": "python", "source": "def grade(sample, item):\n    return 1.0 if len(sample['output_text']) < 60 else 0.0\n"},
        },
        "calculate_output": "0.5 * pot + 0.5 * short",
    }
    with build_grader(spec) as g:
        results = g.grade_many(["def solution():\n    return 12\n", "def solution():\n    return 12" + " " * 80], [{"answer": "12"}] * 2)
    assert [r.score for r in results] == [1.0, 0.5]
