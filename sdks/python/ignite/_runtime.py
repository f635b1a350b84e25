"""The handler process's serving loop: one asyncio loop reading `Invoke` frames from the
agent's channel and running each request as a task of its own.

Used by ``ignite_boot.py`` (serve mode, and each child of the template's fork server); never
started by importing the SDK.
"""

import asyncio
import collections
import mmap
import os
import sys
import threading
import traceback
# Imported here, not when the first instance starts: a template's children inherit it.
from concurrent.futures.thread import ThreadPoolExecutor

import ignite
from ignite import _frames

#: Exit status when the framing channel breaks (as the Rust SDK's).
EXIT_CHANNEL = 70

_READ_SIZE = 64 * 1024
_Invoke = _frames.Invoke
_SHUTDOWN = _frames.SHUTDOWN
_encode_response = _frames.encode_response
_encode_error = _frames.encode_error
_encode_log = _frames.encode_log
_HANDLER = _frames.HANDLER
_PANIC = _frames.PANIC
_parts = ignite._parts
_NotAResponse = ignite._NotAResponse
_Error = ignite.Error
_Request_from = ignite.Request._from_invoke
_Context_from = ignite.Context._from_invoke
_write = os.write
_readv = os.readv
_EAGER_START = sys.version_info >= (3, 12)


def take_stdio():
    """Moves the framing channel off fds 0 and 1, before any user code runs: the channel goes to
    private close-on-exec descriptors, fd 1 becomes a second stderr (so ``print()``, even from C
    code, is a log line and never a corrupt frame) and fd 0 an empty pipe.
    Returns ``(input fd, output fd)``."""
    in_fd = os.dup(0)  # os.dup: not inheritable, i.e. close-on-exec
    out_fd = os.dup(1)
    os.dup2(2, 1)
    empty, writer = os.pipe()
    os.close(writer)
    os.dup2(empty, 0)
    os.close(empty)
    return in_fd, out_fd


def setup_stdio():
    """``sys.stdout`` line-buffered on fd 1 (which is the log pipe by now); both streams UTF-8."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            fd = 1 if name == "stdout" else 2
            stream = open(fd, "w", encoding="utf-8", errors="backslashreplace",
                          line_buffering=True, closefd=False)
            setattr(sys, name, stream)
        try:
            stream.reconfigure(encoding="utf-8", errors="backslashreplace", line_buffering=True)
        except (AttributeError, ValueError, OSError):
            pass


def setup_logging_level():
    """Before the app is imported: the root logger's level is INFO (the app may set another;
    its own ``logging.basicConfig(...)`` still works, as no handler is installed yet)."""
    import logging
    logging.getLogger().setLevel(logging.INFO)


def setup_logging():
    """After the app is imported: unless it configured a handler itself, the root logger
    writes to stderr (the execution's logs)."""
    import logging
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


def _flush_stdio():
    # What the handler printed belongs to its request: it must reach the log pipe before the
    # answer does (the agent reads the pipe when the answer arrives).
    try:
        sys.stdout.flush()
    except Exception:
        pass
    try:
        sys.stderr.flush()
    except Exception:
        pass


def _exception_name(e):
    t = type(e)
    if t.__module__ in ("builtins", "__main__"):
        return t.__qualname__
    return f"{t.__module__}.{t.__qualname__}"


def _panic_message(e):
    try:
        text = str(e)
    except Exception:
        text = ""
    name = _exception_name(e)
    return f"the handler raised {name}: {text}" if text else f"the handler raised {name}"


def _response_frame(id, result):
    """The `Response` frame for what the handler returned, or the `Error` frame saying why it
    is not one."""
    try:
        status, headers, body = _parts(result)
        return _encode_response(id, status, headers, body)
    except _NotAResponse as e:
        message = str(e)
    except _frames.TooLarge as e:
        message = (f"the handler's response of {e.length} bytes exceeds the "
                   f"{_frames.MAX_FRAME_LEN}-byte limit of a frame")
    print(f"ignite: {message}", file=sys.stderr)
    return _encode_error(id, _PANIC, 500, message)


class Server:
    """Serves one channel. The event loop thread reads and writes frames; a sync handler runs in
    a worker thread, and `Context.log` may write from there, so every write takes `lock` (a
    frame is written whole, by one `write` unless the pipe is full)."""

    def __init__(self, handler, is_async, in_fd, out_fd, loop):
        self.handler = handler
        self.is_async = is_async
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.loop = loop
        self.reader = _frames.FrameReader()
        # Anonymous memory, not a bytearray: `bytearray(n)` zero-fills (and so dirties) all of
        # it in every instance, where an mmap's pages are committed only as reads fill them.
        rbuf = mmap.mmap(-1, _READ_SIZE)
        self.rbufs = [rbuf]
        self.rview = memoryview(rbuf)
        self.lock = threading.Lock()
        # The requests in flight, by id: the loop keeps only weak references to its tasks.
        self.tasks = {}
        self.exit_code = None
        ready = getattr(loop, "_ready", None)
        self.ready = ready if type(ready) is collections.deque else None

    # -- writing

    def _send(self, frame):
        fd = self.out_fd
        with self.lock:
            n = _write(fd, frame)
            if n != len(frame):
                view = memoryview(frame)[n:]
                while view:
                    view = view[_write(fd, view):]

    def answer(self, frame):
        _flush_stdio()
        try:
            self._send(frame)
        except OSError as e:
            # The agent is gone: nobody is left to answer.
            print(f"ignite: the framing channel broke writing an answer: {e}", file=sys.stderr)
            _flush_stdio()
            os._exit(EXIT_CHANNEL)

    def log(self, id, line):
        try:
            self._send(_encode_log(id, line))
        except OSError:
            # The agent is gone; the request's own answer fails the same way and ends us.
            pass
        except _frames.TooLarge:
            # As the Rust SDK: a line that cannot be a frame is not sent.
            pass

    def hello(self):
        self.answer(_frames.encode_hello(_frames.PROTOCOL_VERSION, ignite.__version__))

    # -- reading

    def on_readable(self):
        # Into a buffer of our own: a fresh 256 KiB `bytes` per read is an mmap, an mremap and
        # an munmap per request.
        try:
            n = _readv(self.in_fd, self.rbufs)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.fail(f"the framing channel broke: {e}")
            return
        data = self.rview[:n].tobytes()
        if not data:
            try:
                self.reader.eof()
            except _frames.FrameError as e:
                self.fail(str(e))
                return
            self.stop(0)
            return
        try:
            frames = self.reader.feed(data)
        except _frames.FrameError as e:
            self.fail(str(e))
            return
        for frame in frames:
            if type(frame) is _Invoke:
                self.start(frame)
            elif frame is _SHUTDOWN:
                self.stop(0)
                return
            else:
                self.fail(f"the agent sent a frame a handler does not expect: {frame!r}")
                return

    def start(self, invoke):
        id = invoke.id
        coro = self.run(id, _Request_from(invoke), _Context_from(invoke, self))
        if _EAGER_START:
            self.tasks[id] = asyncio.Task(coro, loop=self.loop, eager_start=True)
            return
        # Python 3.11 has no eager tasks: the task's first step is the handle `create_task`
        # appends to the loop's ready queue. Running it here, as 3.12's eager start does, saves
        # a loop iteration per request; the step itself is the task's own (current_task,
        # contextvars and cancellation are as usual). Anything unexpected: leave it queued.
        ready = self.ready
        if ready is None:
            self.tasks[id] = self.loop.create_task(coro)
            return
        queued = len(ready)
        self.tasks[id] = self.loop.create_task(coro)
        if len(ready) == queued + 1:
            ready.pop()._run()

    async def run(self, id, req, ctx):
        try:
            if self.is_async:
                result = await self.handler(req, ctx)
            else:
                result = await asyncio.to_thread(self.handler, req, ctx)
                if asyncio.iscoroutine(result):
                    result = await result
        except _Error as e:
            frame = _encode_error(id, _HANDLER, e.status, e.message)
        except (Exception, asyncio.CancelledError) as e:
            traceback.print_exception(e, file=sys.stderr)
            frame = _encode_error(id, _PANIC, 500, _panic_message(e))
        else:
            frame = _response_frame(id, result)
        finally:
            self.tasks.pop(id, None)
        self.answer(frame)

    # -- ending

    def fail(self, message):
        print(f"ignite: {message}", file=sys.stderr)
        self.stop(EXIT_CHANNEL)

    def stop(self, code):
        if self.exit_code is None:
            self.exit_code = code
        self.loop.remove_reader(self.in_fd)
        self.loop.stop()


def serve(handler, is_async, in_fd, out_fd):
    """Sends `Hello`, then serves requests until the agent sends `Shutdown` or closes the
    channel. Returns the process's exit status (0, or `EXIT_CHANNEL` on a broken channel)."""
    os.set_blocking(in_fd, False)
    os.set_blocking(out_fd, True)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # Sync handlers run in worker threads; with a few cores the default pool (cores + 4) would
    # cap how many requests a sync handler serves at once below the app's concurrency.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="ignite"))
    server = Server(handler, is_async, in_fd, out_fd, loop)
    server.hello()
    loop.add_reader(in_fd, server.on_readable)
    try:
        loop.run_forever()
    finally:
        # Requests still in flight end with the process, as in the Rust SDK; say nothing about
        # their tasks being destroyed.
        for task in server.tasks.values():
            try:
                task._log_destroy_pending = False
            except AttributeError:
                pass
        _flush_stdio()
    return server.exit_code or 0


def warm_up(rounds=64):
    """Runs the SDK's own request path `rounds` times in the template, with a handler of its
    own (never the app's), over a pipe pair, in a throwaway event loop: what every instance
    would otherwise do on its first requests — the interpreter specialising the SDK's bytecode,
    caches filling — is then done once, in pages the template's forks share instead of each
    copying them."""
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    loop = asyncio.new_event_loop()
    try:
        async def handler(req, ctx):
            return {"message": req.field("message", default="warm"), "id": ctx.execution_id}

        server = Server(handler, True, r_in, w_out, loop)
        os.set_blocking(r_in, False)
        os.set_blocking(r_out, False)
        invoke = _frames.encode_invoke(
            1, "warm", "warm", 0, [], "POST", "/", "",
            [("content-type", "application/json")], b'{"message": "warm"}')
        for _ in range(rounds):
            os.write(w_in, invoke)
            server.on_readable()
            loop.run_until_complete(asyncio.sleep(0))
            try:
                while os.read(r_out, 65536):
                    pass
            except BlockingIOError:
                pass
    except Exception:  # a warm-up that fails costs only its benefit
        pass
    finally:
        loop.close()
        asyncio.set_event_loop(None)
        for fd in (r_in, w_in, r_out, w_out):
            os.close(fd)
