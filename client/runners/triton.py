"""A model on one Triton server over HTTP or gRPC (tritonclient), as a Runner.

Connections belong to the thread that uses them: tritonclient's HTTP client (geventhttpclient) refuses to be used
from a thread other than the one that created it, so each thread that calls `infer` gets its own client, made on
first use and closed by `release()` (from that thread) or `deactivate()`. The model's description (ModelInfo) is
read once and shared. A wrong address is named as such: the gRPC port asked over HTTP, the HTTP port over gRPC,
the metrics port, or nothing listening.
"""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from client.cli import PORTS, default_url, split_urls
from client.runners.base import PROXY_FAILED, ModelInfo, Runner, RunnerError, describe_failure
from segformer.errors import first_line

ROOT = Path(__file__).resolve().parent.parent.parent


def _http_get(url: str, timeout: float = 3.0) -> tuple[int | None, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(400)
    except urllib.error.HTTPError as e:
        return e.code, e.read(400)
    except Exception:  # noqa: BLE001 - nothing HTTP there (refused, reset, not HTTP/1.1)
        return None, b""


def _not_live(url: str) -> str:
    """Why an HTTP liveness check said no: Triton itself, or a proxy in front of it with no replica up."""
    status, body = _http_get(f"http://{url}/v2/health/live", timeout=5)
    if status is None:
        return "Triton is not live"
    if str(status) in PROXY_FAILED and b"<html" in body.lower():
        return PROXY_FAILED[str(status)]
    return f"Triton is not live (HTTP {status})"


def _grpc_answers(url: str) -> bool:
    import tritonclient.grpc as grpcclient

    try:
        c = grpcclient.InferenceServerClient(url)
        try:
            return bool(c.is_server_live(client_timeout=3))
        finally:
            c.close()
    except Exception:  # noqa: BLE001 - not a gRPC Triton
        return False


def wrong_port(url: str, protocol: str) -> str | None:
    """What answers at `url` instead of Triton's `protocol` endpoint, as the fix to make; None if nothing does."""
    host = url.rsplit(":", 1)[0] if ":" in url else url
    m_status, m_body = _http_get(f"http://{url}/metrics")
    if m_status == 200 and b"nv_" in m_body:
        return (f"{url} is Triton's metrics endpoint: use the HTTP port ({host}:{PORTS['http']}) or, with "
                f"--protocol grpc, the gRPC port ({host}:{PORTS['grpc']})")
    status, body = _http_get(f"http://{url}/v2")
    if protocol == "grpc" and status == 200 and b'"name"' in body:
        return (f"{url} is Triton's HTTP endpoint, not gRPC: pass --protocol http, or the gRPC port "
                f"({host}:{PORTS['grpc']} by default)")
    if protocol == "http" and _grpc_answers(url):
        return (f"{url} is Triton's gRPC endpoint, not HTTP: pass --protocol grpc, or the HTTP port "
                f"({host}:{PORTS['http']} by default)")
    if status is not None and protocol == "http":
        return f"{url} answers HTTP but is not Triton (HTTP {status} for /v2/health/live): check --url"
    return None


def built_on_disk(model: str, repo: Path | None = None) -> Path | None:
    """The model's directory in the local model repository (SEGFORMER_MODEL_REPOSITORY, else the project's
    model_repository/), if `make repo` built it there."""
    import os

    repo = repo or Path(os.environ.get("SEGFORMER_MODEL_REPOSITORY") or ROOT / "model_repository")
    d = repo / model
    return d if (d / "config.pbtxt").is_file() else None


class TritonRunner(Runner):
    def __init__(self, model: str, url: str | None = None, protocol: str = "http", timeout: float = 120.0):
        if protocol not in PORTS or protocol == "metrics":
            raise RunnerError(f"unknown protocol {protocol!r}: use http or grpc")
        self.model, self.protocol, self.timeout = model, protocol, timeout
        urls = split_urls(url)
        self.url = urls[0] if urls else default_url(protocol)
        self.info: ModelInfo | None = None
        self.inputs: set[str] = set()
        self.outputs: set[str] = set()
        self._local = threading.local()
        self._clients: list = []  # every client made, so deactivate() can close the ones threads left open
        self._lock = threading.Lock()
        if protocol == "http":
            import tritonclient.http as tc
        else:
            import tritonclient.grpc as tc
        self.tc = tc

    # -- connections (one per thread) ----------------------------------------------------------------------
    @property
    def client(self):
        """The calling thread's client, made (and checked live) on first use."""
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._connect()
        return c

    def _connect(self):
        kwargs = {"network_timeout": self.timeout, "connection_timeout": 10.0} if self.protocol == "http" else {}
        try:
            client = self.tc.InferenceServerClient(self.url, **kwargs)
            live = client.is_server_live()
            if live and self.protocol == "http":  # an HTTP server that answers anything (the metrics port) is not
                _as_dict(client.get_server_metadata())["version"]  # Triton until it describes itself
        except Exception as exc:  # noqa: BLE001 - connection errors come in many types
            raise RunnerError(self._unreachable(exc)) from None
        if not live:
            client.close()
            raise RunnerError(f"{self.url}: {_not_live(self.url)}")
        self._local.client = client
        with self._lock:
            self._clients.append(client)
        return client

    def _unreachable(self, exc: BaseException) -> str:
        why = describe_failure(exc)
        if why not in PROXY_FAILED.values() and self.protocol == "http":
            proxy = _not_live(self.url)  # a proxy's error page closes the connection before the client reads it
            why = proxy if proxy in PROXY_FAILED.values() else why
        if why in PROXY_FAILED.values():
            return f"{self.url}: {why}"
        other = wrong_port(self.url, self.protocol)
        if other:
            return other
        return (f"cannot reach Triton at {self.url} ({self.protocol}): start it with `make serve` or pass --url "
                f"({type(exc).__name__})")

    def connect(self):
        """Make (or reuse) the calling thread's client; RunnerError with the fix when the server is not there."""
        return self.client

    def release(self) -> None:
        c = getattr(self._local, "client", None)
        if c is not None:
            self._local.client = None
            with self._lock:
                if c in self._clients:
                    self._clients.remove(c)
            _close(c)

    def deactivate(self) -> None:
        self.release()
        with self._lock:
            left, self._clients = self._clients, []
        for c in left:
            _close(c)

    # -- the model -----------------------------------------------------------------------------------------
    def activate(self) -> ModelInfo:
        client = self.client
        try:
            ready = client.is_model_ready(self.model)
        except Exception as exc:  # noqa: BLE001 - a timeout or a broken connection is not "not served"
            raise RunnerError(f"Triton at {self.url} did not say whether {self.model!r} is ready "
                              f"({describe_failure(exc)})") from None
        if not ready:
            raise RunnerError(self._not_served())
        try:
            cfg = _as_dict(client.get_model_config(self.model))
        except Exception as exc:  # noqa: BLE001 - the server answered something that is not a model config
            raise RunnerError(f"{self.url} did not give {self.model!r}'s config ({describe_failure(exc)})") from None
        cfg = cfg.get("config", cfg)
        self.info = info_from_config(self.model, cfg)
        self.inputs = {i.get("name") for i in cfg.get("input", [])}
        self.outputs = {o.get("name") for o in cfg.get("output", [])}
        return self.info

    @property
    def takes_encoded(self) -> bool:
        """Whether the model takes one JPEG/PNG file per request (`encoded`: a row's `_jpeg` ensemble, the GPU
        row)."""
        self.ensure_active()
        return "encoded" in self.inputs

    def _not_served(self) -> str:
        try:
            served = ", ".join(self.served_models()) or "none"
        except RunnerError as exc:
            served = f"unknown ({exc})"
        msg = f"model {self.model!r} is not served at {self.url}; served models: {served}"
        on_disk = built_on_disk(self.model)
        if on_disk is not None:
            msg += (f". It is built in {on_disk.parent.name}/ but this server started before it (or does not load "
                    "it): restart the server (`make stop serve`) to load it")
        return msg

    def served_models(self) -> list[str]:
        """Names of the loaded models, from the statistics API (the repository index is an operator API that
        `make serve` keeps behind a key); RunnerError when the server cannot list them (e.g. a timeout)."""
        try:
            stats = _as_dict(self.client.get_inference_statistics())
        except RunnerError:
            raise
        except Exception as exc:  # noqa: BLE001 - tritonclient raises its own and transport exceptions
            raise RunnerError(f"Triton at {self.url} did not list its models ({first_line(exc)})") from None
        return sorted({m["name"] for m in stats.get("model_stats", [])})

    def metadata(self) -> dict:
        """The model's metadata (inputs, outputs, versions) as a dict, whatever the protocol."""
        try:
            return _as_dict(self.client.get_model_metadata(self.model))
        except RunnerError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise RunnerError(f"{self.url} did not give {self.model!r}'s metadata ({describe_failure(exc)})") \
                from None

    def statistics(self) -> dict:
        """Triton's statistics of this model as a dict ({} when the server cannot say)."""
        try:
            return _as_dict(self.client.get_inference_statistics(self.model))
        except Exception:  # noqa: BLE001 - statistics are optional everywhere they are shown
            return {}

    # -- requests ------------------------------------------------------------------------------------------
    def images_input(self, batch: np.ndarray):
        inp = self.tc.InferInput("images", list(batch.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(batch))
        return inp

    def encoded_input(self, blobs: list[bytes], name: str = "encoded"):
        """One encoded image per row as the model's `encoded` input (uint8 [n, L]; all blobs the same length)."""
        arr = np.stack([np.frombuffer(b, np.uint8) for b in blobs])
        inp = self.tc.InferInput(name, list(arr.shape), "UINT8")
        inp.set_data_from_numpy(arr)
        return inp

    def send(self, inputs: list, outputs: tuple[str, ...] = ("labels",)):
        """One request as built (see images_input); the result object, or RunnerError with one line. The model
        version that answered is `last_version` (of the calling thread) and `model_version(result)`."""
        out = [self.tc.InferRequestedOutput(n) for n in outputs]
        kwargs = {"timeout": int(self.timeout)} if self.protocol == "http" else {"client_timeout": self.timeout}
        try:
            result = self.client.infer(self.model, inputs, outputs=out, **kwargs)
        except RunnerError:
            raise
        except Exception as exc:  # noqa: BLE001 - InferenceServerException and transport errors
            why = describe_failure(exc)
            raise RunnerError(f"inference on {self.model} failed: {why}", why) from None
        self._local.version = model_version(result)
        return result

    @property
    def last_version(self) -> str | None:
        """The model version that answered the calling thread's last request (None before the first)."""
        return getattr(self._local, "version", None)

    def infer_encoded(self, data: bytes) -> tuple[np.ndarray, list[int] | None]:
        """Labels for one encoded image file sent as is: (labels [H, W] as the model answers them, placement
        [content h, content w, image h, image w] where the model says it, else None: labels at the model's size,
        the image stretched to it)."""
        self.ensure_active()
        if not self.takes_encoded:
            raise RunnerError(f"{self.model} takes no encoded images: send raw frames, or use its `_jpeg` ensemble")
        names = ("labels", "placement") if "placement" in self.outputs else ("labels",)
        res = self.send([self.encoded_input([data])], names)
        placement = res.as_numpy("placement")[0].tolist() if "placement" in names else None
        return res.as_numpy("labels")[0], placement

    def infer(self, images: np.ndarray, logits: bool = False) -> np.ndarray:
        info = self.ensure_active()
        info.check(images)
        name = "logits" if logits else "labels"
        if logits and not info.has_logits:
            raise RunnerError(f"{self.model} has no logits output")
        outs = []
        for i in range(0, len(images), info.max_batch):
            res = self.send([self.images_input(images[i:i + info.max_batch])], (name,))
            outs.append(res.as_numpy(name))
        info.version = self.last_version or info.version  # the version that answered (a reload may change it)
        return np.concatenate(outs)


def model_version(result) -> str | None:
    """The version of the model that answered, from a tritonclient result (HTTP: JSON, gRPC: protobuf)."""
    try:
        response = result.get_response()
    except Exception:  # noqa: BLE001 - a result object of another kind
        return None
    version = response.get("model_version") if isinstance(response, dict) else getattr(response, "model_version",
                                                                                          None)
    return str(version) if version else None


def _close(client) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing from another thread or after the server went away
        pass


def _as_dict(msg) -> dict:
    if isinstance(msg, dict):
        return msg
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True)


def _params(cfg: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}


def info_from_config(name: str, cfg: dict) -> ModelInfo:
    """ModelInfo from a model config as Triton returns it (JSON form): size (or the dynamic range and its
    optimum), max batch, classes, palette, logits output, trained classes, licence."""
    try:
        outputs = {o["name"] for o in cfg.get("output", [])}
        inputs = {i.get("name"): i for i in cfg.get("input", [])}
        if "images" not in inputs and "encoded" in inputs and "placement" in outputs:  # a row's `_jpeg` ensemble
            labels = next(o for o in cfg["output"] if o["name"] == "labels")
            info = _info(name, [int(d) for d in labels["dims"]] + [3], _params(cfg), cfg, outputs)
            info.payload = "encoded"
            return info
        image_input = inputs["images"]
        dims = [int(d) for d in image_input["dims"]]
        if "labels" not in outputs or len(dims) != 3:
            raise KeyError("labels")
    except (StopIteration, KeyError, TypeError, ValueError):
        raise RunnerError(f"model {name!r} is not a segmentation model of this project (it needs an `images` input "
                          "[H,W,3] and a `labels` output)") from None
    return _info(name, dims, _params(cfg), cfg, outputs)


def _info(name, dims, params, cfg, outputs) -> ModelInfo:
    size, size_range = size_of(dims, params)
    return ModelInfo(name, size, int(cfg.get("max_batch_size", 1)) or 1,
                     json.loads(params.get("classes") or "[]"),
                     [tuple(c) for c in json.loads(params.get("palette") or "[]")], size_range,
                     "logits" in outputs,
                     json.loads(params["trained_classes"]) if params.get("trained_classes") else None,
                     licence=params.get("licence") or None)


def size_of(dims: list[int], params: dict[str, str]):
    """(size, size_range) of a model from its `images` dims and parameters: a dynamic row (dims -1) reads its
    range and optimum from `size_range` / `opt_size`."""
    size_range = json.loads(params["size_range"]) if params.get("size_range") else None
    if size_range:
        size_range = tuple(tuple(int(x) for x in s) for s in size_range)
    if params.get("opt_size"):
        size = tuple(int(x) for x in json.loads(params["opt_size"]))
    elif dims[0] > 0 and dims[1] > 0:
        size = (int(dims[0]), int(dims[1]))
    elif size_range:
        size = size_range[1]
    else:
        raise RunnerError("the model takes any size (dims -1) but names no size range: rebuild it with `make repo`")
    return size, size_range
