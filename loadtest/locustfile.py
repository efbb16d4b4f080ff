"""Locust users that call a SegFormer served by Triton, one inference per task, timed as locust requests.

    locust -f loadtest/locustfile.py --host localhost:8001 --model segformer_b1 [--images DIR] [--payload raw]
    locust -f loadtest/locustfile.py --host a:8001,b:8001 ...      # users spread over several servers

`TritonGrpcUser` speaks gRPC (port 8001), `TritonHttpUser` HTTP/REST (port 8000): pick one with the class name
on the command line (or in the web UI). Each user sends real images from --images (prepared by the model's input
policy, client.policy, as client.segment sends them) or generated street-like frames, `--batch` images per request. Payload `raw` is the
uint8 [N,H,W,3] tensor every model here takes; `png` / `jpeg` send encoded bytes and are refused with a clear
message unless the model declares a BYTES input for them. Failures (server errors, timeouts, a dead server) are
reported to locust as failures with the server's message; nothing is retried or hidden.
"""
from __future__ import annotations

import io
import itertools
import time

import numpy as np
from locust import User, between, events, task  # noqa: F401 - between kept for users who want think time
from locust.exception import StopUser

try:  # make blocking gRPC calls yield to locust's greenlets (stats, heartbeats) while they wait for the server
    import grpc.experimental.gevent as _grpc_gevent

    _grpc_gevent.init_gevent()
except (ImportError, AttributeError):  # pragma: no cover - grpc without gevent support: calls block the worker
    pass

_FRAMES: dict = {}


@events.init_command_line_parser.add_listener
def _args(parser):
    parser.add_argument("--model", default="segformer_b1", help="served model name")
    parser.add_argument("--images", default="", help="folder of images to send (default: generated frames)")
    parser.add_argument("--payload", choices=("raw", "png", "jpeg"), default="raw", help="what is sent")
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds per request")


def _frames(info, folder: str, n: int = 8) -> list[np.ndarray]:
    """Request tensors prepared by the model's input policy (what client.segment sends), shared by the users.
    Made one at a time with a yield to gevent between them: a worker busy for seconds making 1024² frames would
    miss its heartbeats and be dropped by the master (a run of "0 requests")."""
    import gevent

    from client.policy import InputPolicy

    key = (info.name, tuple(info.size), folder)
    if key not in _FRAMES:
        _FRAMES[key] = InputPolicy.for_model(info).frames(folder, n, between=lambda: gevent.sleep(0))
    return _FRAMES[key]


class _TritonUser(User):
    """A thin user: one runner on one server (client.runners.TritonRunner), moved to the next server by the shared
    fail-over (client.runners.Failover) when its server goes away; each request timed in `infer`, nothing else."""

    abstract = True
    protocol = "grpc"
    _started = itertools.count()

    def _stop(self, message: str):
        """Say why in the run's log (loadtest.run puts it in the summary's note), stop the run, end this user."""
        import logging

        logging.getLogger("loadtest").error(f"error: {message}")
        if self.environment.runner:
            self.environment.runner.quit()
        raise StopUser(message)

    def _connect(self, url: str):
        from client.runners import TritonRunner

        runner = TritonRunner(self.model, url, self.protocol, self.timeout)
        runner.activate()
        runner.meta = runner.metadata()
        return runner

    def on_start(self):
        from client.cli import split_urls
        from client.runners import Failover

        opts = self.environment.parsed_options
        self.model, self.batch, self.payload = opts.model, max(1, opts.batch), opts.payload
        self.timeout = opts.request_timeout
        urls = split_urls(self.host) or [None]
        self.servers = Failover(urls, self._connect, close=lambda r: r.deactivate(), first=next(self._started))
        problems = self.servers.start()
        if self.servers.current is None:
            self._stop("; ".join(problems))
        runner = self.servers.current
        encoded = [i["name"] for i in runner.meta.get("inputs", []) if i.get("datatype") == "BYTES"]
        if self.payload != "raw" and not encoded:
            raise StopUser(f"{self.model} takes raw uint8 tensors only; use --payload raw")
        frames = _frames(runner.info, opts.images)
        self.batches = [np.stack([frames[(i + j) % len(frames)] for j in range(self.batch)])
                        for i in range(len(frames))]
        self.encoded = encoded[0] if encoded else None
        self.i = 0

    def _request(self, runner, batch):
        if self.payload == "raw":
            return [runner.images_input(batch)]
        inp = runner.tc.InferInput(self.encoded, [len(batch), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[_encode(b, self.payload)] for b in batch], dtype=object))
        return [inp]

    @task
    def infer(self):
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.servers.ensure()  # every server was gone last time: look again before sending
        t0 = time.perf_counter()
        exc, size = None, 0
        try:
            runner = self.servers.current
            if runner is None:
                raise ConnectionError(f"no Triton server left of {', '.join(self.servers.urls)}")
            size = runner.send(self._request(runner, batch)).as_numpy("labels").nbytes
        except Exception as e:  # noqa: BLE001 - every failure is reported, with the server's message
            from client.runners import describe_failure

            exc = RuntimeError(self.servers.label(describe_failure(e)))
        self.environment.events.request.fire(
            request_type=self.protocol, name=f"{self.model} x{self.batch}",
            response_time=(time.perf_counter() - t0) * 1e3, response_length=size, exception=exc, context={})
        if exc is not None:
            self.servers.failed(str(exc))

    def on_stop(self):
        if getattr(self, "servers", None) is not None:
            self.servers.stop()


def _encode(image: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=90)
    return buf.getvalue()


class TritonGrpcUser(_TritonUser):
    protocol = "grpc"


class TritonHttpUser(_TritonUser):
    protocol = "http"
