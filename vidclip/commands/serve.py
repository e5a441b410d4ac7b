"""``vidclip serve INDEX``: a web page to search an index (:mod:`vidclip.index.web`), served by uvicorn.

It binds 127.0.0.1 by default: the page has no authentication and plays every indexed video, so another
address is served only when asked, with a warning. The socket is bound here, before uvicorn starts, so a port
in use is one line and exit status 2, and ``--port 0`` takes a free port (the printed URL names it).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
import sys

from vidclip.commands.common import COMMAND_ERRORS, fail, non_negative_int

EPILOG = """examples:
  vidclip serve my-index/                 # then open http://127.0.0.1:8000/
  vidclip serve my-index/ --port 8080
  curl 'http://127.0.0.1:8000/api/search?q=a+dog+on+a+beach&k=5'
"""
INSTALL = "the search page needs fastapi and uvicorn: pip install 'vidclip[serve]'"


def port_number(text: str) -> int:
    """argparse type for ``--port``: 0 (any free port) to 65535."""
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vidclip serve",
        description="Serve a search page (and a JSON API) over an index made by vidclip index.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("index", metavar="INDEX", help="an index folder (vidclip index ... --out INDEX)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; another address lets anyone who "
        "can reach it search the index and watch its videos)",
    )
    parser.add_argument(
        "--port", type=port_number, default=8000, help="port (default 8000; 0: any free port)"
    )
    return parser.parse_args(argv)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ValueError naming them when the port is taken or the host unknown."""
    try:
        found = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = found[0]
    except socket.gaierror as err:
        raise ValueError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
    )  # as uvicorn does: a closed server's port is free
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on {host} is in use; pass --port") from None
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    """The ``vidclip serve`` command: runs until Ctrl-C (0), 2 on a bad index, host or port."""
    args = parse_args(argv)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        return fail("serve", INSTALL)
    from vidclip.index.video_index import VideoIndex
    from vidclip.index.web import LOOPBACK_HOSTS, create_app

    try:
        index = VideoIndex.load(args.index)
    except COMMAND_ERRORS as err:
        return fail("serve", err)
    loopback = is_loopback(args.host)
    if not loopback:
        print(
            f"vidclip serve: warning: --host {args.host} is not a loopback address: anyone who can reach it can "
            "search this index and watch its videos (there is no authentication)",
            file=sys.stderr,
        )
    try:
        sock = bind(args.host, args.port)
    except ValueError as err:
        return fail("serve", err)
    port = sock.getsockname()[1]
    wildcard = args.host in ("0.0.0.0", "::", "[::]")
    hosts = ["*"] if wildcard else [*LOOPBACK_HOSTS, args.host.strip("[]")]
    app = create_app(index, allowed_hosts=hosts)
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}.get(args.host, args.host)
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    print(
        f"vidclip serve: {len(index.videos)} videos, {len(index)} vectors from {args.index}; "
        f"open http://{shown}:{port}/ (Ctrl-C to stop)",
        flush=True,
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    try:
        with sock:
            uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again
        pass
    print("vidclip serve: stopped", file=sys.stderr)
    return 0
