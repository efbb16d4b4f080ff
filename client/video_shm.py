"""Frames and labels through system shared memory instead of the wire, for a client on the server's host.

`ShmRunner` is a TritonRunner whose requests carry no tensor: every sender thread owns two POSIX shared-memory
regions (its frame in, its labels out), registered with the server on the thread's own connection; a request
writes the frame into the input region (one memcpy) and reads the labels from the output region. What stays on
the wire is the request's header. The regions grow when a larger frame comes (a dynamic-size row), are
unregistered and removed by the thread's release() and, for threads that did not, by deactivate().

Only for a server on this host (localhost): a region is a file under /dev/shm the server maps. `CudaShmRunner`
(--shm cuda) puts the frames in CUDA shared memory instead (the client copies each frame to the GPU; a GPU model
reads it in place, where the python backend would otherwise carry the frame's CPU tensor into its stub); labels
still come back through system shared memory.
"""
from __future__ import annotations

import itertools
import os

import numpy as np

from client.cli import split_urls
from client.runners.base import RunnerError, describe_failure
from client.runners.triton import TritonRunner

SHM_KINDS = ("none", "system", "cuda")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
_names = itertools.count()


def check_local(url: str | None, kind: str = "system") -> None:
    """RunnerError unless `url` is one server on this host (a region is a file the server maps)."""
    urls = split_urls(url)
    if len(urls) > 1:
        raise RunnerError(f"--shm {kind} shares memory with one server: pass one --url")
    host = urls[0].rsplit(":", 1)[0] if urls else "localhost"
    if host not in LOCAL_HOSTS:
        raise RunnerError(f"--shm {kind} needs the server on this host (--url localhost:PORT); {urls[0]} is another "
                          "host: drop --shm to send the frames over the network")


class _Region:
    def __init__(self, role: str, size: int):
        import tritonclient.utils.shared_memory as shm

        self.shm, self.size = shm, size
        self.name = f"segvid_{os.getpid()}_{next(_names)}_{role}"
        self.handle = shm.create_shared_memory_region(self.name, f"/{self.name}", size)
        self.registered_with = None

    def register(self, client) -> None:
        client.register_system_shared_memory(self.name, f"/{self.name}", self.size)
        self.registered_with = client

    def destroy(self) -> None:
        if self.registered_with is not None:
            try:
                self.registered_with.unregister_system_shared_memory(self.name)
            except Exception:  # noqa: BLE001 - the server may be gone; the region goes anyway
                pass
            self.registered_with = None
        try:
            self.shm.destroy_shared_memory_region(self.handle)
        except Exception:  # noqa: BLE001 - destroyed already
            pass


class ShmRunner(TritonRunner):
    """A model on a Triton server on this host, frames in and labels out through system shared memory."""

    transport = "system shm"
    kind = "system"

    def __init__(self, model: str, url: str | None = None, protocol: str = "grpc", timeout: float = 120.0):
        check_local(url, self.kind)
        super().__init__(model, url, protocol, timeout)
        self._regions: list[_Region] = []

    def activate(self):
        info = super().activate()
        if "images" not in self.inputs:
            raise RunnerError(f"{self.model} takes encoded files, not frames: --shm {self.kind} sends frames")
        try:  # the server must be able to map a region of this host: said before any frame is sent
            probe = _Region("probe", 64)
            try:
                probe.register(self.client)
            finally:
                probe.destroy()
        except Exception as exc:  # noqa: BLE001 - tritonclient and OS errors
            raise RunnerError(f"--shm system: the server at {self.url} cannot map this host's shared memory "
                              f"({describe_failure(exc)}): run it on this host (not in a container without "
                              "/dev/shm shared) or drop --shm") from None
        return info

    def _region(self, role: str, size: int) -> _Region:
        """The calling thread's region for `role`, registered on its connection, at least `size` bytes."""
        r = getattr(self._local, role, None)
        if r is not None and r.size >= size:
            return r
        if r is not None:
            r.destroy()
        r = _Region(role, size)
        with self._lock:
            self._regions.append(r)
        try:
            r.register(self.client)
        except Exception as exc:  # noqa: BLE001
            r.destroy()
            raise RunnerError(f"--shm system: cannot register a region with {self.url} ({describe_failure(exc)})") \
                from None
        setattr(self._local, role, r)
        return r

    def _input(self, batch: np.ndarray):
        """The request's `images` input, its bytes put in this thread's input region."""
        src = self._region("rin", batch.nbytes)
        src.shm.set_shared_memory_region(src.handle, [batch])
        inp = self.tc.InferInput("images", list(batch.shape), "UINT8")
        inp.set_shared_memory(src.name, batch.nbytes)
        return inp

    def infer(self, images: np.ndarray, logits: bool = False) -> np.ndarray:
        if logits:
            raise RunnerError(f"--shm {self.kind} carries labels only (no --slide)")
        info = self.ensure_active()
        info.check(images)
        outs = []
        for i in range(0, len(images), info.max_batch):
            batch = np.ascontiguousarray(images[i:i + info.max_batch])
            inp, dst = self._input(batch), self._region("rout", batch.nbytes // 3)
            out = self.tc.InferRequestedOutput("labels")
            out.set_shared_memory(dst.name, batch.nbytes // 3)
            kwargs = {"timeout": int(self.timeout)} if self.protocol == "http" else {"client_timeout": self.timeout}
            try:
                self.client.infer(self.model, [inp], outputs=[out], **kwargs)
            except Exception as exc:  # noqa: BLE001 - InferenceServerException and transport errors
                why = describe_failure(exc)
                raise RunnerError(f"inference on {self.model} failed: {why}", why) from None
            labels = dst.shm.get_contents_as_numpy(dst.handle, np.uint8, list(batch.shape[:3]))
            outs.append(np.array(labels))  # a copy: the region is overwritten by the thread's next request
        return np.concatenate(outs)

    def release(self) -> None:
        for role in ("rin", "rout"):
            r = getattr(self._local, role, None)
            if r is not None:
                r.destroy()
                setattr(self._local, role, None)
                with self._lock:
                    if r in self._regions:
                        self._regions.remove(r)
        super().release()

    def deactivate(self) -> None:
        with self._lock:
            left, self._regions = self._regions, []
        for r in left:
            r.destroy()
        super().deactivate()


class CudaShmRunner(ShmRunner):
    """Frames into CUDA shared memory (copied to the GPU by this process, read in place by a GPU model: the python
    backend's GPU row takes them without a copy through the host), labels back through system shared memory.
    Each sender thread owns one region (client.cuda_region.CudaRegion: a PyTorch CUDA tensor shared by its IPC
    handle), grown when a larger frame comes."""

    transport = "CUDA shm in, system shm out"
    kind = "cuda"

    def activate(self):
        try:
            import torch

            ok = torch.cuda.is_available()
        except ImportError:
            ok = False
        if not ok:
            raise RunnerError("--shm cuda copies frames to a GPU in this process: it needs PyTorch with a CUDA GPU "
                              "here (use --shm system)")
        return super().activate()

    def _input(self, batch: np.ndarray):
        import torch

        from client.cuda_region import CudaRegion

        region = getattr(self._local, "cuda_in", None)
        if region is None or region.slot_bytes < batch.nbytes:
            self._drop_cuda()
            region = CudaRegion(f"segvid_{os.getpid()}_{next(_names)}_cin", batch.nbytes, 1)
            try:
                region.register(self.client)
            except Exception as exc:  # noqa: BLE001 - tritonclient errors
                raise RunnerError(f"--shm cuda: {self.url} cannot open this process's CUDA memory "
                                  f"({describe_failure(exc)}): run it on this host's GPU, or use --shm system") \
                    from None
            region.client = self.client
            self._local.cuda_in = region
        offset = region.write(0, torch.from_numpy(batch))  # one upload, straight into the region
        inp = self.tc.InferInput("images", list(batch.shape), "UINT8")
        inp.set_shared_memory(region.name, batch.nbytes, offset=offset)
        return inp

    def _drop_cuda(self) -> None:
        region = getattr(self._local, "cuda_in", None)
        if region is not None:
            try:
                region.client.unregister_cuda_shared_memory(region.name)
            except Exception:  # noqa: BLE001 - the server may be gone
                pass
            self._local.cuda_in = None

    def release(self) -> None:
        self._drop_cuda()
        super().release()


def shm_runner(kind: str, model: str, url: str | None, protocol: str, timeout: float):
    """The runner for --shm KIND: ShmRunner for `system`, CudaShmRunner for `cuda`, None for `none` (the caller's
    usual runner)."""
    if kind in (None, "none"):
        return None
    if kind not in SHM_KINDS:
        raise RunnerError(f"--shm {kind}: choose from {', '.join(SHM_KINDS)}")
    return (CudaShmRunner if kind == "cuda" else ShmRunner)(model, url, protocol, timeout)


__all__ = ["SHM_KINDS", "CudaShmRunner", "ShmRunner", "check_local", "shm_runner"]
