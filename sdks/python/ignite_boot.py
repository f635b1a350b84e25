"""Starts a Python app: ``/usr/bin/python3 -I -S ignite_boot.py check|serve|template``.

Environment: ``IGNITE_APP_DIR`` (the app tree, default ``/app``) and ``IGNITE_SDK_DIR`` (this
SDK, default this script's directory). The app's ``main.py`` registers its handler with
``@ignite.main``; its packages live in ``IGNITE_APP_DIR/.packages``.

- ``check``: imports ``main`` and checks that it registered a handler (exit 1 with the reason
  on stderr otherwise). Run at build time.
- ``serve``: serves the runtime protocol on stdin/stdout.
- ``template``: a fork server on fd 3 (see `template`); each child serves like ``serve``.

Only the standard library is used. Nothing here runs at import.
"""

import os
import sys

_USAGE = "usage: python3 -I -S ignite_boot.py check|serve|template"
EXIT_USAGE = 64
EXIT_CHANNEL = 70
NO_HANDLER = "main.py defines no handler: decorate your handler with @ignite.main"


# --------------------------------------------------------------------------------------------
# Paths and the app.


def _dirs():
    app = os.environ.get("IGNITE_APP_DIR") or "/app"
    sdk = os.environ.get("IGNITE_SDK_DIR") or os.path.dirname(os.path.abspath(__file__))
    return app, sdk


def _import_sdk(sdk):
    """Imports the SDK (and the standard modules it uses) from `sdk` before the app's directories
    are on the path, so that neither an app module nor a package named like one of them (say
    pytorch-ignite's ``ignite``) can stand in for them."""
    sys.path.insert(0, sdk)
    try:
        import ignite
        import ignite._runtime  # noqa: F401 (asyncio and the rest, imported once, here)
    finally:
        sys.path.remove(sdk)
    return ignite


def _app_path(app, sdk):
    sys.path[:0] = [app, os.path.join(app, ".packages"), sdk]


def _print_exception(e):
    """The traceback of an exception raised while importing the app, from the app's frames."""
    import traceback
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    traceback.print_exception(type(e), e, tb, file=sys.stderr)


def _load_app(ignite, app):
    """Imports ``main`` and returns ``(handler, is_async, where)``, or prints why it cannot and
    returns None."""
    try:
        import main  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name == "main":
            print(f"no main.py in {app}: a Python app's handler lives in main.py, decorated "
                  "with @ignite.main", file=sys.stderr)
        else:
            _print_exception(e)
        return None
    except SystemExit as e:
        print(f"main.py exited while it was being imported (sys.exit({e.code!r})); the handler "
              "must not run at import: decorate it with @ignite.main", file=sys.stderr)
        return None
    except BaseException as e:
        _print_exception(e)
        return None
    registered = ignite._registered()
    if registered is None:
        print(NO_HANDLER, file=sys.stderr)
    return registered


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


# --------------------------------------------------------------------------------------------
# check


def check():
    app, sdk = _dirs()
    ignite = _import_sdk(sdk)
    _app_path(app, sdk)
    registered = _load_app(ignite, app)
    if registered is None:
        return 1
    print(f"the handler is {registered[2]}")
    return 0


# --------------------------------------------------------------------------------------------
# serve


def _become_init_if_pid_1():
    """As pid 1 of a pid namespace (a sandbox), signals without a handler are ignored and orphans
    are ours to reap. Like the Rust SDK (and tini), pid 1 then forks: the child serves with
    ordinary signal semantics; pid 1 forwards SIGTERM/SIGINT/SIGHUP, reaps, and exits with the
    child's status (``128 + n`` for a child killed by signal ``n``)."""
    if os.getpid() != 1:
        return
    try:
        child = os.fork()
    except OSError:
        return  # serve as pid 1 anyway
    if child == 0:
        return
    import signal

    def forward(signum, _frame):
        try:
            os.kill(child, signum)
        except OSError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    # The channel and the log pipe are the child's alone: the agent sees them close the moment
    # the child dies.
    for fd in (0, 1, 2):
        try:
            os.close(fd)
        except OSError:
            pass
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(EXIT_CHANNEL)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code)


def serve():
    _become_init_if_pid_1()
    if os.isatty(0):
        print("this is an Ignite handler: it speaks the runtime protocol on stdin/stdout and is "
              "started by the platform. Deploy it with `dodil ignite draft save/publish`, or try "
              "it locally with `dodil ignite run <dir> -p '{...}'`.", file=sys.stderr)
        return EXIT_USAGE
    app, sdk = _dirs()
    ignite = _import_sdk(sdk)
    runtime = ignite._runtime
    # Before any code of the app runs: nothing it prints can reach the channel.
    in_fd, out_fd = runtime.take_stdio()
    runtime.setup_stdio()
    runtime.setup_logging_level()
    _app_path(app, sdk)
    registered = _load_app(ignite, app)
    if registered is None:
        return 1
    runtime.setup_logging()
    handler, is_async, _ = registered
    return runtime.serve(handler, is_async, in_fd, out_fd)


# --------------------------------------------------------------------------------------------
# template


def _ensure_stdio_open():
    """Opens /dev/null (or an empty pipe) on any of fds 0-2 that is closed, so that received
    descriptors never land there."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                new = os.open(os.devnull, os.O_RDWR)
            except OSError:
                new, writer = os.pipe()
                os.close(writer)
            if new != fd:
                os.dup2(new, fd)
                os.close(new)


def _listed_fds():
    """The descriptors open in this process, from /proc (or /dev/fd); None without either."""
    for where in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(where)
        except OSError:
            continue
        return sorted(int(n) for n in names if n.isdigit())
    return None


def _open_fds():
    """The descriptors open in this process, listed, or else found by probing each up to the
    open-files limit (at most 65,536). The second value is where probing stopped (None: the
    list is complete)."""
    listed = _listed_fds()
    if listed is not None:
        return listed, None
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = 65536 if soft == resource.RLIM_INFINITY or soft > 65536 else soft
    fds = []
    for fd in range(limit):
        try:
            os.fstat(fd)
        except OSError:
            continue
        fds.append(fd)
    return fds, limit


def _reopen(fd, st):
    """A new open file description of the regular file on `fd` (same path, flags and offset),
    as Android's zygote reopens files: the child then reads and seeks on its own, not on the
    template's shared offset. None when that cannot be done (no /proc, the file was deleted or
    replaced, no permission)."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
        import fcntl
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        new = os.open(path, (flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)) | os.O_CLOEXEC)
    except (OSError, ImportError):
        return None
    try:
        again = os.fstat(new)
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
            raise OSError("not the same file")
        os.lseek(new, offset, os.SEEK_SET)
    except OSError:
        os.close(new)
        return None
    return new


def _detach_inherited(keep, placeholder, inherited):
    """Cuts every descriptor the child inherited from the template (except `keep` and 0-2) off
    the template's open file descriptions.

    A regular file is reopened onto the same number (same path, flags and offset; see
    `_reopen`), so a file or database the app opened at import keeps working, each child on its
    own offset. Anything else (a socket, a pipe, a directory, a file that cannot be reopened) is
    detached the way Android's zygote detaches sockets: replaced by `placeholder`, the read end
    of an empty pipe, close-on-exec. It is closed as far as this process goes, but its number
    stays taken until its owner (an object created at import time) closes it, so that owner can
    never close or write to a descriptor since reused for something else (the channel, the
    event loop, a connection). Reading it gives end of file, writing EBADF, socket calls
    ENOTSOCK."""
    import stat
    # Listed afresh where /proc allows. Without it, `inherited` is the template's own list
    # (`_open_fds`, made before its loop, which opens no descriptor but the ones it receives
    # and closes after each fork), so the probing is paid once, there, not at every fork.
    listed = _listed_fds()
    fds, probed_to = inherited if listed is None else (listed, None)
    for fd in fds:
        if fd < 3 or fd in keep:
            continue
        try:
            st = os.fstat(fd)  # the listing's own descriptor is closed by now
        except OSError:
            continue
        inheritable = os.get_inheritable(fd)
        new = _reopen(fd, st) if stat.S_ISREG(st.st_mode) else None
        if new is None:
            os.dup2(placeholder, fd, inheritable=False)
        else:
            os.dup2(new, fd, inheritable=inheritable)
            os.close(new)
    if probed_to is not None:
        os.closerange(probed_to, 1 << 20)


class _Child:
    """What `template` returns in a forked child: its three descriptors and the platform
    socket."""

    def __init__(self, sock, fds, inherited):
        self.sock = sock
        self.fds = fds
        self.inherited = inherited


def _become_instance(child, struct, signal):
    """In a forked child: reports the pid, moves the instance's descriptors into place, drops all
    the template held, resets what a fork shares. Returns ``(input fd, output fd)``."""
    sock = child.sock
    in_fd, out_fd, err_fd = child.fds
    # The kernel attaches this process's credentials (SO_PASSCRED on the platform's end): the
    # platform learns the child's host pid from them, so the child itself must send this.
    try:
        sock.send(b"p" + struct.pack("<I", os.getpid()))
    except OSError:
        pass  # the platform is gone; the instance's own pipes say so soon enough
    # The instance's stderr on fd 2, a second stderr on fd 1, an empty pipe on fd 0; the channel
    # stays on the private descriptors it arrived on (close-on-exec). The received descriptors
    # are all above 3 (fds 0-3 were open in the template), so no dup2 here clobbers another.
    empty, writer = os.pipe()
    os.close(writer)
    os.dup2(err_fd, 2)
    os.dup2(2, 1)
    os.dup2(empty, 0)
    os.close(err_fd)
    os.set_inheritable(in_fd, False)
    os.set_inheritable(out_fd, False)
    sock.close()  # fd 3
    _detach_inherited({in_fd, out_fd, empty}, empty, child.inherited)
    os.close(empty)
    # What a fork shares and must not: the random generator's state (the module reseeds itself
    # at fork too), asyncio's loop bookkeeping (a fresh policy: no loop of the template's), a
    # wakeup fd the template's code may have set.
    if "random" in sys.modules:
        sys.modules["random"].seed()
    import asyncio
    asyncio.set_event_loop_policy(None)
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    return in_fd, out_fd


def template():
    """The fork server (Android-zygote style). fd 3 is an AF_UNIX SOCK_SEQPACKET socket to the
    platform. Imports the app once, sends ``b"r"``, then for each ``b"f"`` message carrying three
    descriptors (the new instance's stdin, stdout and stderr) forks a child that sends
    ``b"p" + u32 pid`` and serves on them. A failed fork answers ``b"e" + message``; every child
    that ends is reported as ``b"x" + u32 pid + i32 raw wait status``. End of file on fd 3 ends
    the template (exit 0)."""
    import socket
    import signal
    import struct

    _ensure_stdio_open()
    try:
        sock = socket.socket(fileno=3)
    except OSError as e:
        print(f"template mode needs the platform's socket on fd 3: {e}", file=sys.stderr)
        return EXIT_USAGE
    # Not for any process the app starts.
    os.set_inheritable(3, False)
    app, sdk = _dirs()
    ignite = _import_sdk(sdk)
    runtime = ignite._runtime
    runtime.setup_stdio()
    runtime.setup_logging_level()
    _app_path(app, sdk)
    registered = _load_app(ignite, app)
    if registered is None:
        return 1
    runtime.setup_logging()
    handler, is_async, _ = registered

    # Whatever the import allocated stays put: a collection in a child would otherwise touch
    # (and copy) every page of it.
    import gc
    runtime.warm_up()
    gc.collect()
    gc.freeze()

    # The app's import may have closed one of fds 0-2: received descriptors must not land there.
    _ensure_stdio_open()
    role = _fork_server(sock, socket, signal, struct, _open_fds())
    if role is None:
        return 0
    in_fd, out_fd = _become_instance(role, struct, signal)
    return runtime.serve(handler, is_async, in_fd, out_fd)


def _fork_server(sock, socket, signal, struct, inherited):
    """The template's loop. Returns None when the platform closed the socket, or a `_Child` in a
    forked child (which then becomes an instance)."""
    template_pid = os.getpid()
    pack_exit = struct.Struct("<Ii").pack
    SIGCHLD = signal.SIGCHLD

    def report(message):
        try:
            sock.send(message)
        except OSError:
            pass  # the platform is gone: the loop sees end of file next

    def reap():
        # Python runs signal handlers between bytecodes, so this can run inside itself (the
        # handler interrupting the loop's own call): each waitpid hands out a pid once, so
        # every child is reported exactly once either way.
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            report(b"x" + pack_exit(pid, status))

    def on_sigchld(_signum, _frame):
        if os.getpid() == template_pid:  # never in a child
            reap()

    signal.signal(SIGCHLD, on_sigchld)
    # The template is pid 1 of its namespace, which the kernel shields from every signal sent
    # from inside it that has no handler: with none, an instance cannot stop its siblings'
    # template (Python's own SIGINT handler would raise KeyboardInterrupt here). The platform,
    # outside the namespace, still can. Instances get Python's usual handlers back.
    shielded = [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                            signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM)]
    for signum in shielded:
        signal.signal(signum, signal.SIG_DFL)
    # A spare child is forked ahead of need and parked on a socket of its own: a request for
    # an instance hands it the three descriptors, so the fork is not on the cold start's path.
    # The next spare is forked right after, while the template would otherwise wait.
    spare = None  # (pid, the template's end of its socket)

    def fork(fds):
        """Forks; in the child returns a `_Child` (with `fds`, or, for a spare, once it has been
        handed its descriptors), in the template the child's pid (None if fork failed)."""
        _flush()  # the child must not inherit the template's unwritten output
        park = None if fds is not None else socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Blocked across the fork: the child must never run the SIGCHLD handler (it sets the
        # default disposition before it unblocks), and the parent runs it right after.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {SIGCHLD})
        try:
            pid = os.fork()
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if park is not None:
                park[0].close()
                park[1].close()
            if fds is not None:
                report(b"e" + f"fork failed: {e}".encode())
            return None
        if pid == 0:
            signal.signal(SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if park is not None:
                if spare is not None:
                    spare[1].close()
                park[0].close()
                # Announced while parked (by the spare itself: the kernel attaches its pid), so
                # the platform moves it into its instance's cgroup ahead of need too.
                try:
                    sock.send(b"s" + struct.pack("<I", os.getpid()))
                except OSError:
                    os._exit(0)
                try:
                    _, fds, _, _ = socket.recv_fds(park[1], 1, 3, socket.MSG_CMSG_CLOEXEC)
                except OSError:
                    fds = []
                park[1].close()
                if len(fds) != 3:
                    os._exit(0)  # the template let it go (or ended)
            return _Child(sock, fds, inherited)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if park is not None:
            park[1].close()
            return (pid, park[0])
        return pid

    sock.send(b"r")
    while True:
        reap()  # a report is never lost, even if a signal was coalesced
        if spare is None:
            made = fork(None)
            if isinstance(made, _Child):
                return made
            spare = made
        try:
            msg, fds, flags, _ = socket.recv_fds(sock, 64, 8, socket.MSG_CMSG_CLOEXEC)
        except ConnectionResetError:
            return None  # the platform closed its end with reports it had not read
        except OSError as e:
            print(f"ignite template: reading the platform socket failed: {e}", file=sys.stderr)
            raise SystemExit(1)
        if not msg and not fds:
            return None
        if msg != b"f" or len(fds) != 3 or flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            for fd in fds:
                os.close(fd)
            report(b"e" + (
                f"expected b'f' with 3 descriptors, got {msg[:16]!r} with {len(fds)}"
                f"{' (truncated)' if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) else ''}"
            ).encode())
            continue
        handed = False
        if spare is not None:
            _, park = spare
            spare = None
            try:
                socket.send_fds(park, [b"f"], fds)
                handed = True
            except OSError:
                pass  # the spare is gone: fork one for this request instead
            park.close()
        if not handed:
            made = fork(fds)
            if isinstance(made, _Child):
                return made
        for fd in fds:
            os.close(fd)


# --------------------------------------------------------------------------------------------


def _main(argv):
    modes = {"check": check, "serve": serve, "template": template}
    if len(argv) != 2 or argv[1] not in modes:
        print(_USAGE, file=sys.stderr)
        return EXIT_USAGE
    return modes[argv[1]]()


if __name__ == "__main__":
    code = _main(sys.argv)
    _flush()
    sys.exit(code)
