"""The package against real servers in process mode: calls by name, sync and async, threads,
every exception class, and cleanup."""

import asyncio
import sys
import threading
import time

import pytest

import rayfine
import rayfine.aio
from conftest import COUNTER, ECHO, pid_alive


def test_a_method_is_called_by_its_name_with_keyword_and_positional_arguments():
    with rayfine.load_env(path=ECHO) as env:
        assert env.echo(text="hi") == "hi"
        assert env.add(2, 3) == 5
        assert env.call("add", 1, b=2) == 3
        assert env.echo(text={"nested": [1, 2.5, None, True]}) == {"nested": [1, 2.5, None, True]}
        assert {"echo", "add", "slow_echo"} <= set(dir(env))
        assert env.is_ready()
        assert env.mode == "process" and env.url.startswith("http://127.0.0.1:")
        assert "token" not in repr(env).lower() and env.url in repr(env)


def test_env_vars_reach_the_environment_and_cleanup_ends_its_process():
    env = rayfine.load_env(path=COUNTER, env_vars={"COUNTER_NAME": "py", "COUNTER_STEP": "5"})
    pid = env.pid
    assert env.increment(times=2) == 10
    assert env.get() == {"name": "py", "value": 10}
    assert rayfine.get_environment(env.id).id == env.id
    env.cleanup()
    env.cleanup()  # idempotent
    assert not pid_alive(pid)
    assert all(e.id != env.id for e in rayfine.list_active_environments())
    with pytest.raises(rayfine.EnvironmentStopped):
        env.get()


def test_a_failing_constructor_is_start_failed_with_its_log_lines():
    with pytest.raises(rayfine.StartFailed) as failed:
        rayfine.load_env(path=COUNTER)  # no COUNTER_NAME: the constructor raises KeyError
    assert "COUNTER_NAME" in str(failed.value)
    assert isinstance(failed.value, rayfine.RayfineError)


def test_every_call_error_is_its_own_exception_class(make_env):
    folder = make_env(
        """
        import time

        def boom():
            raise ValueError("bad move")

        def nap(seconds):
            time.sleep(seconds)
            return seconds

        def odd():
            return object()
        """
    )
    with rayfine.load_env(path=folder) as env:
        with pytest.raises(rayfine.RemoteError) as raised:
            env.boom()
        assert raised.value.remote_type == "ValueError" and raised.value.remote_message == "bad move"
        assert "bad move" in raised.value.remote_traceback and "remote traceback" in str(raised.value)
        with pytest.raises(rayfine.MethodNotFound) as missing:
            env.no_such_method()
        assert "boom" in str(missing.value) and "nap" in str(missing.value)
        with pytest.raises(rayfine.InvalidArguments):
            env.nap(1, 2, 3)
        with pytest.raises(rayfine.ResultNotSerializable):
            env.odd()
        with pytest.raises(TypeError, match="argument 'seconds'.*set"):
            env.nap(seconds={1})
        # A sync call past its timeout: the server restarts the worker to stop it.
        with pytest.raises(rayfine.CallTimeout) as late:
            env.nap(seconds=5, _timeout=0.5)
        assert isinstance(late.value, TimeoutError)
        # NotReady while the new worker loads: the error to retry on.
        deadline = time.monotonic() + 30
        while True:
            try:
                assert env.nap(seconds=0) == 0, "the environment serves again after all that"
                break
            except rayfine.NotReady:
                assert time.monotonic() < deadline, "the worker did not come back"
                time.sleep(0.05)


def test_a_server_that_is_not_there_is_a_connection_error():
    with pytest.raises(rayfine.ConnectionError) as refused:
        rayfine.load_env(url="http://127.0.0.1:9", startup_timeout=1)
    assert isinstance(refused.value, ConnectionError)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="one of image, path= and url="):
        rayfine.load_env("img:v1", path=ECHO)
    with pytest.raises(ValueError, match="startup_timeout"):
        rayfine.load_env(path=ECHO, startup_timeout=-1)
    with pytest.raises(ValueError, match="lease"):
        rayfine.load_env(path=ECHO, lease=float("nan"))
    with pytest.raises(rayfine.InvalidInput):
        rayfine.load_env(path="/no/such/folder")
    with pytest.raises(ValueError, match="bogus://x.*not a Docker host"):
        rayfine.load_env("img:v1", hosts=["local", "bogus://x"])
    with pytest.raises(ValueError, match="mode must be"):
        rayfine.load_env("img:v1", mode="kubernetes")
    with pytest.raises(rayfine.InvalidInput, match="Docker hosts are for images"):
        rayfine.load_env(path=ECHO, hosts="local")


def test_64_threads_call_at_once():
    with rayfine.load_env(path=ECHO) as env:
        results, errors = [], []

        def work(i):
            try:
                for j in range(20):
                    results.append(env.add(i, j) == i + j)
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(err)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(results) == 64 * 20 and all(results)


def test_500_concurrent_async_calls_from_one_loop():
    async def main():
        async with await rayfine.aio.load_env(path=ECHO) as env:
            texts = await asyncio.gather(*(env.slow_echo(text=str(i), delay=0.2) for i in range(500)))
            assert texts == [str(i) for i in range(500)]
            assert await env.call("add", 1, 2) == 3
            with pytest.raises(rayfine.MethodNotFound):
                await env.nope()
            return env.pid

    pid = asyncio.run(main())
    assert not pid_alive(pid)


def test_a_loop_is_woken_through_a_descriptor_it_watches_or_else_by_call_soon_threadsafe():
    """Finished calls wake a selector loop through an eventfd it watches (no GIL on the runtime's
    thread); a loop that cannot watch one (as Windows' proactor) is woken the other way."""

    class NoReaders(asyncio.SelectorEventLoop):
        def add_reader(self, fd, callback, *args):
            raise NotImplementedError("this loop watches no file descriptors")

    async def calls():
        loop = asyncio.get_running_loop()
        watched_before = set(loop._selector.get_map())
        async with await rayfine.aio.load_env(path=ECHO) as env:
            assert await asyncio.gather(*(env.call("add", i, 1) for i in range(50))) == list(range(1, 51))
            assert await env.call("add", 1, 2) == 3
        readers = [key.data[0] for fd, key in loop._selector.get_map().items() if fd not in watched_before]
        return [type(handle._callback).__name__ for handle in readers if handle is not None]

    assert asyncio.run(calls()) == (["FdDrain"] if sys.platform.startswith("linux") else [])
    loop = NoReaders()
    try:
        assert loop.run_until_complete(calls()) == []
    finally:
        loop.close()


def test_a_sync_call_to_a_killed_server_says_it_stopped():
    import os
    import signal

    env = rayfine.load_env(path=ECHO)
    try:
        assert env.ping() == "pong"  # a kept-alive connection to reuse
        os.kill(env.pid, signal.SIGKILL)
        with pytest.raises(rayfine.EnvironmentStopped) as stopped:
            env.ping()
        assert "SIGKILL" in str(stopped.value) or "signal 9" in str(stopped.value), str(stopped.value)
    finally:
        env.cleanup()


def test_an_async_call_is_cancelled_by_wait_for_and_each_loop_gets_its_results():
    async def first_loop(env):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(env.slow_echo(text="late", delay=5), timeout=0.2)
        # The environment still answers, on this loop, at once.
        started = time.monotonic()
        assert await env.slow_echo(text="on time", delay=0) == "on time"
        assert time.monotonic() - started < 2

    async def second_loop(env):
        return await asyncio.gather(*(env.add(i, 1) for i in range(64)))

    async def load():
        return await rayfine.aio.load_env(path=ECHO)

    env = asyncio.run(load())
    try:
        asyncio.run(first_loop(env))
        assert asyncio.run(second_loop(env)) == [i + 1 for i in range(64)]
    finally:
        asyncio.run(env.cleanup())


def test_event_loops_that_made_calls_are_freed():
    import gc
    import weakref

    env = rayfine.load_env(path=ECHO)
    aenv = rayfine.aio.get_environment(env.id)
    loops = []

    async def one_loop():
        loops.append(weakref.ref(asyncio.get_running_loop()))
        assert await aenv.ping() == "pong"

    async def left_running():
        # A call nobody awaits to its end, still running when asyncio.run closes the loop: its
        # result comes after the close and must not keep the loop (and its eventfd) alive.
        loops.append(weakref.ref(asyncio.get_running_loop()))
        asyncio.ensure_future(aenv.slow_echo(text="late", delay=0.3))
        assert await aenv.ping() == "pong"

    try:
        for _ in range(3):
            asyncio.run(one_loop())
        asyncio.run(left_running())
        time.sleep(0.6)  # the late result arrives
        gc.collect()
        assert [ref() for ref in loops] == [None, None, None, None]
    finally:
        env.cleanup()
