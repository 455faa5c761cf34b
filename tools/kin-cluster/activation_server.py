#!/usr/bin/env python3
"""A socket-activated HTTP server, as systemd (or kin-cluster --activation) starts one.

usage: activation_server.py

It takes its listening sockets from the environment the way sd_listen_fds() does: LISTEN_PID
must be this process's pid, and descriptors 3 .. 3+LISTEN_FDS-1 must be listening stream
sockets; otherwise it says why on stderr and exits 1. On start it prints one line to stderr:

    activation_server: pid PID fds N names LISTEN_FDNAMES

Every connection, on any of its sockets, gets one answer once the request's headers are in:
HTTP/1.1 200 OK, Connection: close, body "activated PID\\n"; then the server half-closes and
closes once the client has. A request for /slow is answered after one second. On SIGTERM (or
SIGINT) it stops accepting, finishes the connections it holds, and exits 0.
"""
import os
import selectors
import signal
import socket
import sys
import threading
import time

NAME = "activation_server"
FIRST_FD = 3


def say(what):
    # One write, so that the lines of workers sharing a stderr do not interleave.
    os.write(2, f"{NAME}: {what}\n".encode())


def fail(what):
    say(what)
    sys.exit(1)


def listeners_from_environment():
    pid_text = os.environ.get("LISTEN_PID", "")
    fds_text = os.environ.get("LISTEN_FDS", "")
    if not pid_text or not fds_text:
        fail(f"not socket-activated: LISTEN_PID={pid_text!r} LISTEN_FDS={fds_text!r}")
    if not pid_text.isdigit() or int(pid_text) != os.getpid():
        fail(f"LISTEN_PID is {pid_text!r}, not this process ({os.getpid()})")
    if not fds_text.isdigit() or int(fds_text) < 1:
        fail(f"LISTEN_FDS is {fds_text!r}")
    sockets = []
    for fd in range(FIRST_FD, FIRST_FD + int(fds_text)):
        try:
            s = socket.socket(fileno=fd)
        except OSError as e:
            fail(f"descriptor {fd} is not a socket: {e}")
        if s.type != socket.SOCK_STREAM:
            fail(f"descriptor {fd} is not a stream socket")
        if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            fail(f"descriptor {fd} is not listening")
        os.set_inheritable(fd, False)
        s.setblocking(False)
        sockets.append(s)
    # As sd_listen_fds(1): what was meant for this process is not passed on to its children.
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    return sockets


def serve(conn):
    body = f"activated {os.getpid()}\n".encode()
    try:
        conn.settimeout(10)
        request = b""
        while b"\r\n\r\n" not in request and b"\n\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        if request.split(b" ", 2)[1:2] == [b"/slow"]:
            say(f"pid {os.getpid()} serving /slow")
            time.sleep(1)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):
            pass
    except OSError:
        pass
    finally:
        conn.close()


def main():
    names = os.environ.get("LISTEN_FDNAMES", "")
    listeners = listeners_from_environment()
    say(f"pid {os.getpid()} fds {len(listeners)} names {names}")
    stopping = threading.Event()

    def on_signal(signo, frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    selector = selectors.DefaultSelector()
    for s in listeners:
        selector.register(s, selectors.EVENT_READ)
    in_flight = []
    while not stopping.is_set():
        for key, _ in selector.select(timeout=0.1):
            try:
                conn, _ = key.fileobj.accept()
            except (BlockingIOError, InterruptedError):
                continue
            conn.setblocking(True)
            t = threading.Thread(target=serve, args=(conn,), daemon=True)
            t.start()
            in_flight.append(t)
        in_flight = [t for t in in_flight if t.is_alive()]
    selector.close()
    for s in listeners:
        s.close()
    for t in in_flight:
        t.join(timeout=15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
