"""The CLI kit every command of the project is built from: shared option groups, defaults in one place, and one
wrapper that turns any ProjectError into the single `error: ...` line and its exit code.

    ap = argparse.ArgumentParser(...)
    cli.add_server_options(ap)              # --url, --protocol, --timeout (client side)
    cli.add_model_option(ap)                # --model
    args = ap.parse_args(argv)
    return cli.run(lambda: body(args))      # ProjectError -> "error: ..." and its exit_code; Ctrl-C -> 130
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from segformer.errors import ProjectError, first_line

# Triton's ports, the one place they are written (the Makefile passes its own HTTP_PORT/GRPC_PORT/METRICS_PORT)
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
PROTOCOLS = ("http", "grpc")
LOCAL = "localhost"
DEFAULT_MODEL = "segformer_b1"


def default_url(protocol: str = "http") -> str:
    """Where a local Triton answers `protocol` by default (`localhost:8000` for HTTP, `:8001` for gRPC)."""
    return f"{LOCAL}:{PORTS[protocol]}"


def split_urls(url: str | None) -> list[str]:
    """`a:8001,b:8001` -> ['a:8001', 'b:8001'] (empty entries, spaces and http:// / grpc:// prefixes dropped)."""
    out = []
    for u in (url or "").split(","):
        u = u.strip()
        for prefix in ("http://", "https://", "grpc://"):
            u = u.removeprefix(prefix)
        if u:
            out.append(u)
    return out


def add_server_options(ap: argparse.ArgumentParser, protocols=PROTOCOLS, default: str = "http",
                       timeout: float = 120.0, metrics: bool = False, several: bool = True) -> None:
    """--url (one server, or several as a,b), --protocol (when more than one is offered), --timeout, and with
    `metrics` --metrics-url."""
    g = ap.add_argument_group("server")
    ports = ", ".join(f"{default_url(p)} {p}" for p in protocols)
    g.add_argument("--url", default=None, help=f"Triton address (default {ports})" +
                   ("; several as a:PORT,b:PORT spread the requests and move on when one goes away" if several
                    else ""))
    if len(protocols) > 1:
        g.add_argument("--protocol", choices=tuple(protocols), default=default,
                       help=f"HTTP (port {PORTS['http']}) or gRPC (port {PORTS['grpc']}); default {default}")
    else:
        ap.set_defaults(protocol=protocols[0])
    g.add_argument("--timeout", type=float, default=timeout, help=f"seconds per request (default {timeout:g})")
    if metrics:
        g.add_argument("--metrics-url", default=default_url("metrics"),
                       help=f"Triton's Prometheus metrics (default {default_url('metrics')})")


def add_listen_options(ap: argparse.ArgumentParser, host: str = "127.0.0.1") -> None:
    """The server side: --host and the three ports a Triton listens on."""
    g = ap.add_argument_group("listen")
    g.add_argument("--host", default=host, help=f"address to bind (default {host}; 0.0.0.0 opens it to the network)")
    g.add_argument("--http-port", type=int, default=PORTS["http"])
    g.add_argument("--grpc-port", type=int, default=PORTS["grpc"])
    g.add_argument("--metrics-port", type=int, default=PORTS["metrics"])


def add_model_option(ap: argparse.ArgumentParser, default: str = DEFAULT_MODEL, help: str | None = None) -> None:
    ap.add_argument("--model", default=default, help=help or f"served model name (default {default})")


def add_images_option(ap: argparse.ArgumentParser, flag: str = "--images", required: bool = False,
                      help: str | None = None) -> None:
    ap.add_argument(flag, default=None if required else "", required=required,
                    help=help or "folder of images to send (default: generated street-like frames)")


def url_of(args, protocol: str | None = None) -> str:
    """The --url given, or the default address for the protocol."""
    return args.url or default_url(protocol or getattr(args, "protocol", "http"))


def error_line(exc: BaseException) -> str:
    label = getattr(exc, "label", "error")
    return f"{label}: {first_line(exc)}"


def run(body: Callable[[], int | None], handled: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's body: a ProjectError (or one of `handled`) is one line on stderr and its exit code (2 by
    default); Ctrl-C is exit 130. Anything else is a bug and keeps its traceback."""
    try:
        rc = body()
        return 0 if rc is None else int(rc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ProjectError as exc:
        print(error_line(exc), file=sys.stderr)
        return exc.exit_code
    except handled as exc:  # type: ignore[misc]
        print(error_line(exc), file=sys.stderr)
        return getattr(exc, "exit_code", 2)


class PlainProgress:
    """Progress as whole lines for logs and pipes (no carriage returns): `desc: 3/12 img (25 %), 1.20 img/s`,
    printed at most every `every` seconds or each 10 % of a known total, and once at the end."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", file=None, every: float = 30.0,
                 disable: bool = False, **_):
        import time

        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.file, self.every, self.n, self.postfix = file or sys.stderr, every, 0, ""
        self._t0 = self._last = time.perf_counter()
        self._last_step = -1
        self._closed = False

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _line(self) -> str:
        import time

        dt = max(1e-9, time.perf_counter() - self._t0)
        share = f"/{self.total} {self.unit} ({100 * self.n / self.total:.0f} %)" if self.total else f" {self.unit}"
        return f"{self.desc + ': ' if self.desc else ''}{self.n}{share}, {self.n / dt:.2f} {self.unit}/s" + \
            (f", {self.postfix}" if self.postfix else "")

    def update(self, n: int = 1) -> None:
        import time

        self.n += n
        if self.disable:
            return
        now = time.perf_counter()
        step = int(10 * self.n / self.total) if self.total else -1
        if now - self._last >= self.every or (self.total and step != self._last_step and step < 10):
            self._last, self._last_step = now, step
            print(self._line(), file=self.file, flush=True)

    def set_postfix(self, ordered_dict=None, **kw) -> None:
        items = {**(ordered_dict or {}), **kw}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def write(self, text: str) -> None:
        print(text, file=self.file, flush=True)

    def close(self) -> None:
        if not self._closed and not self.disable and self.n:
            print(self._line() + " done", file=self.file, flush=True)
        self._closed = True


def progress(iterable=None, total=None, desc: str = "", unit: str = "it", disable: bool = False, **kw):
    """A progress bar where a person watches (stderr is a terminal: tqdm), plain progress lines elsewhere (logs, CI,
    pipes): the same calls either way (iterate, update, set_postfix, close)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, **kw)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, disable=disable)


def log(text: str) -> None:
    """A line of progress output that does not break a bar (tqdm.write on a terminal, print elsewhere)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        tqdm.write(text)
    else:
        print(text, flush=True)
