"""A CUDA shared-memory region Triton can open, made from a PyTorch CUDA tensor (no cuda-python): what the load
generator's `raw-cuda` payload and the video client's `--shm cuda` put frames in."""
from __future__ import annotations


def ipc_mem_handle(shared: bytes) -> bytes:
    """The 64-byte cudaIpcMemHandle_t Triton opens, from PyTorch's shared-storage handle: PyTorch >= 2.4 writes
    [format version][kind][payload], kind 'c' (a cudaMalloc block) carrying the 64-byte handle."""
    if len(shared) == 66 and shared[1:2] == b"c":
        shared = shared[2:]
    if len(shared) != 64:
        raise RuntimeError("this PyTorch shares CUDA memory in a form Triton cannot open (expandable segments?): "
                           "unset PYTORCH_CUDA_ALLOC_CONF=expandable_segments")
    return shared


class CudaRegion:
    """One CUDA shared-memory region per load process, a slot of one request's frames per thread. The memory is
    a PyTorch CUDA tensor; its IPC handle (and the tensor's offset inside the allocation the handle names) is
    what Triton's `register_cuda_shared_memory` takes, so no cuda-python is needed."""

    def __init__(self, name: str, slot_bytes: int, slots: int, device: int = 0):
        import base64

        import torch

        self.name, self.slot_bytes, self.device = name, slot_bytes, device
        self.tensor = torch.empty(slot_bytes * slots, dtype=torch.uint8, device=f"cuda:{device}")
        share = self.tensor.untyped_storage()._share_cuda_()
        self.handle, self.offset = base64.b64encode(ipc_mem_handle(bytes(share[1]))), int(share[3])
        self.size = self.offset + slot_bytes * slots  # the region starts at the allocation's base

    def register(self, client) -> None:
        try:
            client.register_cuda_shared_memory(self.name, self.handle, self.device, self.size)
        except Exception as exc:  # noqa: BLE001 - registered already by another thread of this process
            if "already" not in str(exc).lower():
                raise

    def write(self, slot: int, frames) -> int:
        """Copy a batch (a uint8 tensor on the GPU, or on the host: then this is the upload) into `slot`, at most
        `slot_bytes`; returns its offset in the region."""
        import torch

        n = frames.numel()
        if n > self.slot_bytes:
            raise ValueError(f"a batch of {n} bytes does not fit the region's {self.slot_bytes}-byte slots")
        start = slot * self.slot_bytes
        self.tensor[start:start + n].copy_(frames.reshape(-1))
        torch.cuda.current_stream(self.device).synchronize()  # the server reads it as soon as the request lands
        return self.offset + start
