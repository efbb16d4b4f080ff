"""Locust users that call a SegFormer served by Triton, one inference per task, timed as locust requests.

    locust -f loadtest/locustfile.py --host localhost:8001 --model segformer_b1 [--images DIR] [--payload raw]
    locust -f loadtest/locustfile.py --host a:8001,b:8001 ...      # users spread over several servers

`TritonGrpcUser` speaks gRPC (port 8001), `TritonHttpUser` HTTP/REST (port 8000): pick one with the class name
on the command line (or in the web UI). Each user sends real images from --images (resized to the model's input
size with the serving policy) or generated street-like frames, `--batch` images per request. Payload `raw` is the
uint8 [N,H,W,3] tensor every model here takes; `png` / `jpeg` send encoded bytes and are refused with a clear
message unless the model declares a BYTES input for them. Failures (server errors, timeouts, a dead server) are
reported to locust as failures with the server's message; nothing is retried or hidden.
"""
from __future__ import annotations

import io
import itertools
import time
from pathlib import Path

import numpy as np
from locust import User, between, events, task  # noqa: F401 - between kept for users who want think time
from locust.exception import StopUser

try:  # make blocking gRPC calls yield to locust's greenlets (stats, heartbeats) while they wait for the server
    import grpc.experimental.gevent as _grpc_gevent

    _grpc_gevent.init_gevent()
except (ImportError, AttributeError):  # pragma: no cover - grpc without gevent support: calls block the worker
    pass

_IMAGES: dict = {}


@events.init_command_line_parser.add_listener
def _args(parser):
    parser.add_argument("--model", default="segformer_b1", help="served model name")
    parser.add_argument("--images", default="", help="folder of images to send (default: generated frames)")
    parser.add_argument("--payload", choices=("raw", "png", "jpeg"), default="raw", help="what is sent")
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds per request")


def _frames(size: tuple[int, int], folder: str, n: int = 8) -> list[np.ndarray]:
    key = (size, folder)
    if key not in _IMAGES:
        if folder:
            from client.labels import list_images
            from client.preprocess import load_image, resize_image

            _IMAGES[key] = [resize_image(load_image(p), size) for p in list_images(Path(folder))[:n]]
        else:
            from client.preprocess import sample_images

            _IMAGES[key] = list(sample_images(size, n))
    return _IMAGES[key]


class _TritonUser(User):
    """One user keeps one server: with --host a:8001,b:8001 the users are spread over the servers round robin,
    and a user whose server goes away reports that request as failed and goes on with the next server."""

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

    def on_start(self):
        from client.runners import split_urls

        opts = self.environment.parsed_options
        self.model, self.batch, self.payload = opts.model, max(1, opts.batch), opts.payload
        self.timeout = opts.request_timeout
        self.urls = split_urls(self.host) or [None]
        self.k = next(self._started)
        self.client = None
        problems = self._connect()  # this user's server, or the next one that answers
        if self.client is None:
            self._stop("; ".join(problems))
        info, meta, self.tc = self.runner.info, self.meta, self.runner._tc
        inputs = meta["inputs"] if isinstance(meta, dict) else [{"name": i.name, "datatype": i.datatype}
                                                               for i in meta.inputs]
        encoded = [i["name"] for i in inputs if i["datatype"] == "BYTES"]
        if self.payload != "raw" and not encoded:
            raise StopUser(f"{self.model} takes raw uint8 tensors only; use --payload raw")
        frames = _frames(info.size, opts.images)
        self.requests = []
        for i in range(len(frames)):
            batch = np.stack([frames[(i + j) % len(frames)] for j in range(self.batch)])
            if self.payload == "raw":
                inp = self.tc.InferInput("images", list(batch.shape), "UINT8")
                inp.set_data_from_numpy(batch)
            else:
                inp = self.tc.InferInput(encoded[0], [len(batch), 1] if self.batch else [1], "BYTES")
                inp.set_data_from_numpy(np.array([[_encode(b, self.payload)] for b in batch], dtype=object))
            self.requests.append(inp)
        self.outputs = [self.tc.InferRequestedOutput("labels")]
        self.i = 0

    @task
    def infer(self):
        inp = self.requests[self.i % len(self.requests)]
        self.i += 1
        if self.client is None:  # every server was gone last time: look again before sending
            self._next_server()
        t0 = time.perf_counter()
        exc, size, why = None, 0, None
        try:
            if self.client is None:
                raise ConnectionError(f"no Triton server left of {', '.join(self.urls)}")
            kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {"timeout": int(self.timeout)}
            res = self.client.infer(self.model, [inp], outputs=self.outputs, **kwargs)
            size = res.as_numpy("labels").nbytes
        except Exception as e:  # noqa: BLE001 - every failure is reported, with the server's message
            from client.runners import SERVER_GONE, describe_failure

            why = describe_failure(e)  # one line; "the server is gone" when it is
            exc = RuntimeError(why if len(self.urls) == 1 else f"{self.runner.url}: {why}")
        self.environment.events.request.fire(
            request_type=self.protocol, name=f"{self.model} x{self.batch}",
            response_time=(time.perf_counter() - t0) * 1e3, response_length=size, exception=exc, context={})
        if exc is not None and why == SERVER_GONE and len(self.urls) > 1:
            self._next_server()

    def _connect(self) -> list[str]:
        """Connect to the first server from `self.k` on that answers (self.runner, self.client, self.meta);
        self.client stays None when none does. Returns why each skipped server was skipped."""
        from client.runners import TritonRunner

        problems = []
        for _ in range(len(self.urls)):
            runner = TritonRunner(self.model, self.urls[self.k % len(self.urls)], self.protocol, self.timeout)
            try:
                runner.activate()
                self.meta = runner.client.get_model_metadata(self.model)
            except Exception as exc:  # noqa: BLE001 - RunnerError, or the metadata call failing: one line each
                problems.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                self.k += 1
                continue
            self.runner, self.client = runner, runner.client
            break
        return problems

    def _next_server(self):
        """On to the next server after this one went away (the same requests: every server has the model)."""
        if self.client is not None:
            self.runner.deactivate()
            self.client = None
            self.k += 1
        self._connect()
        if self.client is None:  # none answered: the next requests look again, each counted as failed until one does
            time.sleep(0.2)

    def on_stop(self):
        if getattr(self, "runner", None) is not None:
            self.runner.deactivate()


def _encode(image: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=90)
    return buf.getvalue()


class TritonGrpcUser(_TritonUser):
    protocol = "grpc"


class TritonHttpUser(_TritonUser):
    protocol = "http"
