"""However an interpreter ends (normally, by an exception, Ctrl-C during a call, SIGTERM, or
SIGKILL) its environments end too."""

import signal
import subprocess
import sys
import textwrap
import time

from conftest import ECHO, pid_alive, run_python

LOAD = """
import sys, time, rayfine
env = rayfine.load_env(path=%r)
print(env.pid, flush=True)
""" % ECHO


def wait_gone(pid, seconds=15):
    deadline = time.monotonic() + seconds
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


def test_a_normal_exit_ends_the_environment():
    done = run_python(LOAD + "env.echo(text='x')\n")
    assert done.returncode == 0, done.stderr
    assert wait_gone(int(done.stdout.split()[0]))


def test_an_uncaught_exception_ends_the_environment():
    done = run_python(LOAD + "raise RuntimeError('training loop crashed')\n")
    assert done.returncode == 1 and "training loop crashed" in done.stderr
    assert wait_gone(int(done.stdout.split()[0]))


def start(code):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = int(child.stdout.readline().split()[0])
    return child, pid


def test_ctrl_c_during_a_call_is_a_keyboard_interrupt_and_ends_the_environment():
    child, pid = start(LOAD + """
try:
    env.slow_echo(text='x', delay=30)
except KeyboardInterrupt:
    print('interrupted', flush=True)
    raise
""")
    time.sleep(1.0)
    began = time.monotonic()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=20)
    assert "interrupted" in out and "KeyboardInterrupt" in err, err
    assert time.monotonic() - began < 10, "the interrupt waited for the call"
    assert wait_gone(pid)


def test_sigterm_ends_the_environment_and_the_interpreter():
    # One long sleep, as a training loop between rounds might: a SIGTERM that lands after `print`
    # returns but before `sleep` enters the kernel is caught by CPython's C handler and does not
    # interrupt the sleep; Rayfine's handler does not wait for Python's.
    child, pid = start(LOAD + "time.sleep(600)\n")
    try:
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=20)
        assert child.returncode == -signal.SIGTERM
        assert wait_gone(pid)
    finally:
        stop(child)


def test_sigterm_during_a_long_c_call_ends_the_environment_at_once():
    # CPython runs a signal's Python handler on the main thread, between bytecodes: a SIGTERM
    # during a long C call (here a key derivation of many minutes; in training, a tensor op)
    # waited for the call to return, and the environment's end with it.
    child, pid = start(LOAD + """
import hashlib
print('computing', flush=True)
hashlib.pbkdf2_hmac('sha256', b'key', b'salt', 10**9)
""")
    try:
        assert child.stdout.readline().strip() == "computing"
        time.sleep(0.5)
        child.send_signal(signal.SIGTERM)
        assert wait_gone(pid, seconds=10), "the environment's end waited for the C call"
        child.communicate(timeout=10)
        assert child.returncode == -signal.SIGTERM
    finally:
        stop(child)


def test_a_forked_child_killed_by_sigterm_leaves_its_parents_environment_alone():
    # The child inherits the handler but not Rayfine's thread: it dies of SIGTERM as the default
    # would, and the parent's environment still answers.
    done = run_python(LOAD + """
import os, signal
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
time.sleep(0.3)
os.kill(child, signal.SIGTERM)
_, status = os.waitpid(child, 0)
print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, flush=True)
print(env.echo(text='still here'), flush=True)
""", timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[1] == "True" and "still here" in done.stdout, done.stdout
    assert wait_gone(int(lines[0]))


def test_a_program_that_saves_and_restores_the_sigterm_handler_keeps_the_cleanup():
    # Python's signal module cannot see Rayfine's handler, so it reports (and a program that
    # saves and restores the handler puts back) the Python fallback, never SIG_DFL.
    done = run_python(LOAD + """
import signal
previous = signal.signal(signal.SIGTERM, lambda *_: None)
print(previous is not signal.SIG_DFL and getattr(previous, '__module__', '') == 'rayfine', flush=True)
signal.signal(signal.SIGTERM, previous)
print(signal.getsignal(signal.SIGTERM) is previous, flush=True)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)
""".replace("import signal", "import os, signal"), timeout=60)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert done.stdout.split()[1:] == ["True", "True"], done.stdout
    assert wait_gone(int(done.stdout.split()[0]))


def stop(child):
    if child.poll() is None:
        child.kill()
        child.communicate()


def test_sigkill_of_the_interpreter_still_ends_the_environment():
    child, pid = start(LOAD + "time.sleep(60)\n")
    child.kill()
    child.communicate(timeout=20)
    # The server reads end of file on its stdin when its owner dies, whatever the way.
    assert wait_gone(pid)


def test_an_exit_while_async_calls_finish_in_the_background_is_clean():
    # asyncio.run() cancels the calls still running when main() returns; their results arrive on
    # the extension's threads while the interpreter exits. A thread that entered Python then
    # panicked or aborted the process (11 runs in 12 before the fix).
    code = """
import asyncio
import rayfine.aio as aio

async def main():
    env = await aio.load_env(path=%r, mode="process")
    calls = [asyncio.ensure_future(env.slow_echo(text="x", delay=0.02)) for _ in range(300)]
    await asyncio.sleep(0.019)

asyncio.run(main())
""" % ECHO
    for _ in range(4):
        done = run_python(code)
        assert done.returncode == 0, done.stderr
        assert "panicked" not in done.stderr and "Fatal Python error" not in done.stderr, done.stderr


def test_an_exit_while_awaitables_other_than_calls_finish_is_clean():
    # list_methods(), cleanup() and load_env() of rayfine.aio were completed by
    # pyo3_async_runtimes' bridge, which enters Python from a runtime thread with nothing keeping
    # it out at exit, and lets go of the GIL while it wakes the loop: the loop's thread could
    # exit and finalize under it, and the process aborted ("PyGILState_Release: thread state
    # must be current"), once in a CI run right after an awaited cleanup().
    code = """
import asyncio
import rayfine.aio as aio

async def main():
    env = await aio.load_env(path=%r, mode="process")
    pending = [asyncio.ensure_future(env.list_methods()) for _ in range(300)]
    await asyncio.sleep(0.01)
    await asyncio.gather(*pending[:50])
    await env.cleanup()

asyncio.run(main())
""" % ECHO
    for _ in range(4):
        done = run_python(code)
        assert done.returncode == 0, done.stderr
        assert "panicked" not in done.stderr and "Fatal Python error" not in done.stderr, done.stderr
