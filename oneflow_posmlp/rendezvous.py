"""The ranks meet before OneFlow starts, within ``dist.init_timeout`` seconds.

OneFlow 0.9.0 joins the ranks while ``import oneflow`` runs (``oneflow/__init__.py`` creates its environment
from ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``): rank 0 opens its bootstrap service on
``MASTER_PORT`` and waits for every rank; the others retry reaching it every 10 s, up to 60 times, logging only
glog warnings. All of it happens in C++ holding Python's GIL, so nothing in Python (a watchdog thread, a signal
handler) runs until it returns: a missing rank hangs the job in silence.

So the tools meet first, in Python, on the same port (:func:`join`, called by ``oneflow_posmlp.cli.run``
before OneFlow is imported): rank 0 listens on ``MASTER_PORT`` and every other rank connects and says its rank;
when all have arrived rank 0 closes the port and tells them to go, then imports OneFlow, whose service opens the
port again; the others wait until it accepts connections before they import OneFlow (so none of them spends
OneFlow's 10-s retry). Past ``dist.init_timeout`` seconds rank 0 ends with one ``error:`` line naming the
ranks that did not arrive (the others end quietly: rank 0 has said it), a rank that cannot reach rank 0 ends
with one line saying so; both exit 2. Standard library only: importing this module must not import OneFlow.
"""
import os
import selectors
import socket
import sys
import time

HELLO = "posmlp-join"
RETRY = 0.2            # seconds between attempts to reach rank 0
SAY_WAITING_AFTER = 3  # a rank other than 0 says it is waiting after this many seconds without reaching rank 0


class JoinError(Exception):
    """The ranks did not meet; ``quiet``: another rank (rank 0) reports it, this one only exits."""

    def __init__(self, message, quiet=False):
        super().__init__(message)
        self.quiet = quiet


def world_of(environ=None):
    """``(rank, world, addr, port)`` of a multi-rank start (``RANK``, ``WORLD_SIZE`` > 1, ``MASTER_ADDR``,
    ``MASTER_PORT`` all set), else None. JoinError names a variable that is not a number."""
    env = os.environ if environ is None else environ
    names = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    if any(n not in env for n in names):
        return None
    values = {}
    for n in ("RANK", "WORLD_SIZE", "MASTER_PORT"):
        try:
            values[n] = int(env[n])
        except ValueError:
            raise JoinError(f"{n}={env[n]!r} is not a number") from None
    if values["WORLD_SIZE"] <= 1:
        return None
    if not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise JoinError(f"RANK {values['RANK']} is outside WORLD_SIZE {values['WORLD_SIZE']}")
    return values["RANK"], values["WORLD_SIZE"], env["MASTER_ADDR"], values["MASTER_PORT"]


def _ranks(ranks):
    ranks = sorted(ranks)
    shown = ", ".join(map(str, ranks[:8])) + (f" (+{len(ranks) - 8} more)" if len(ranks) > 8 else "")
    return f"rank{'s' if len(ranks) > 1 else ''} {shown}"


def join(timeout, source, environ=None, log=None):
    """Meet the other ranks (module docstring) before OneFlow is imported; nothing on one process or when OneFlow
    is already imported (it has joined). ``source`` says where the ranks came from (``"SLURM"``), for the lines.
    ``log(line)`` (default: stderr) gets the waiting line. Raises :class:`JoinError`."""
    if "oneflow" in sys.modules:
        return
    where = world_of(environ)
    if where is None:
        return
    rank, world, addr, port = where
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    context = f"{addr}:{port}, ranks from {source}"
    deadline = time.monotonic() + timeout
    if rank == 0:
        _serve(world, addr, port, timeout, deadline, context, log)
    else:
        _reach(rank, world, addr, port, timeout, deadline, context, log, source)


def _serve(world, addr, port, timeout, deadline, context, log):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))  # every interface, as OneFlow's service binds
    except OSError as err:
        listener.close()
        raise JoinError(f"rank 0 cannot listen on port {port} ({err.strerror}): another job or a previous run "
                        f"holds it; set MASTER_PORT to a free port") from None
    listener.listen(max(world, 16))
    listener.setblocking(False)
    log(f"rank 0 of {world} waiting for the others at {context}")
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    peers, buffers, problem = {}, {}, None  # rank -> socket; socket -> bytes so far
    try:
        while len(peers) < world - 1 and problem is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(timeout=min(left, 1.0)):
                if key.fileobj is listener:
                    try:
                        conn, _ = listener.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    buffers[conn] = b""
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(256)
                except OSError:
                    data = b""
                if not data or len(buffers[conn]) > 256:  # a rank gone before it said who it is, or not ours
                    sel.unregister(conn)
                    conn.close()
                    buffers.pop(conn)
                    continue
                buffers[conn] += data
                if b"\n" not in buffers[conn]:
                    continue
                problem = _register(buffers[conn].split(b"\n", 1)[0], conn, world, peers)
                sel.unregister(conn)
                if problem is not None:
                    _send(conn, "abort")  # rank 0 says why
                elif conn not in peers.values():
                    conn.close()
        missing = [r for r in range(1, world) if r not in peers]
        if problem is None and not missing:
            listener.close()  # before "go": the port is free for OneFlow when the others look for it
            for conn in peers.values():
                _send(conn, "go")
            return
        verdict = problem or (f"{_ranks(missing)} of {world} did not arrive within dist.init_timeout {timeout:g} s at "
                              f"{context}; check that every task started and can reach this node on that port "
                              f"(docs/cluster.md, 'When the ranks do not meet')")
        for conn in peers.values():
            _send(conn, "abort")
        raise JoinError(verdict)
    finally:
        sel.close()
        listener.close()
        for conn in list(peers.values()) + list(buffers):
            conn.close()


def _register(line, conn, world, peers):
    """Take a rank's hello into ``peers``; returns what is wrong, or None."""
    parts = line.decode(errors="replace").split()
    if len(parts) != 3 or parts[0] != HELLO or not parts[1].isdigit() or not parts[2].isdigit():
        return None  # not one of ours (a port scanner): ignored
    rank, their_world = int(parts[1]), int(parts[2])
    if their_world != world:
        return f"rank {rank} was started with WORLD_SIZE {their_world}, rank 0 with {world}: start all ranks alike"
    if not 0 < rank < world or rank in peers:
        return f"rank {rank} arrived twice (or is out of range 1..{world - 1}): check RANK / SLURM_PROCID of the tasks"
    peers[rank] = conn
    return None


def _send(conn, word):
    try:
        conn.setblocking(True)
        conn.settimeout(5)
        conn.sendall(word.encode() + b"\n")
    except OSError:
        pass


def _reach(rank, world, addr, port, timeout, deadline, context, log, source):
    started, said = time.monotonic(), False
    conn = None
    while conn is None:
        try:
            conn = socket.create_connection((addr, port), timeout=max(min(deadline - time.monotonic(), 5), 0.1))
        except socket.gaierror as err:
            raise JoinError(f"rank {rank} of {world}: MASTER_ADDR {addr!r} does not resolve ({err.strerror}); "
                            f"ranks from {source}") from None
        except OSError:
            if time.monotonic() >= deadline:
                raise JoinError(f"rank {rank} of {world} could not reach rank 0 within dist.init_timeout {timeout:g} s "
                                f"at {context}; check that rank 0 started and that this node reaches it on that port "
                                f"(docs/cluster.md, 'When the ranks do not meet')") from None
            if not said and time.monotonic() - started > SAY_WAITING_AFTER:
                log(f"rank {rank} of {world} waiting for rank 0 at {context}")
                said = True
            time.sleep(RETRY)
    try:
        conn.settimeout(None)
        conn.sendall(f"{HELLO} {rank} {world}\n".encode())
        # rank 0 answers by its own deadline, which may be later than ours (it may have started later)
        conn.settimeout(timeout + 30)
        answer = conn.makefile("rb").readline().strip()
    except OSError:
        answer = b""
    finally:
        conn.close()
    if answer == b"abort":
        raise JoinError("", quiet=True)  # rank 0 says why
    if answer != b"go":
        raise JoinError(f"rank {rank} of {world}: rank 0 at {context} closed the connection without an answer "
                        f"(it failed, or another program holds that port)")
    _wait_for_port(addr, port, rank, world, timeout, context)


def _wait_for_port(addr, port, rank, world, timeout, context):
    """Until rank 0's OneFlow service accepts connections on the port (then OneFlow's first attempt to reach it
    succeeds, instead of retrying 10 s later)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((addr, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise JoinError(f"rank {rank} of {world}: rank 0 did not start OneFlow within dist.init_timeout "
                                f"{timeout:g} s after the ranks met at {context}") from None
            time.sleep(0.05)
