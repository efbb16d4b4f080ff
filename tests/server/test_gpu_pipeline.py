"""The GPU program's helpers that need no Triton (server/models/gpu_pipeline.py), on the CPU: the sizes a dynamic
row takes, the CUDA-graph cache per (bucket, size) and its LRU, the pinned-buffer pool, the responder thread, the
per-stage timing line."""
import threading

import pytest
import torch

from server.models import gpu_pipeline as gp


def test_sizes_parse_and_bad_entries_are_named():
    assert gp.parse_sizes("736x960, 1024x2048,736x960") == ((736, 960), (1024, 2048))
    assert gp.parse_sizes("") == ()
    with pytest.raises(ValueError, match="'736' is not HxW"):
        gp.parse_sizes("736,1024x2048")


def test_size_problem_is_one_line_naming_the_range_and_the_fix():
    rng = ((256, 256), (1024, 2048))
    assert gp.size_problem(736, 960, rng) is None and gp.size_problem(1024, 2048, rng) is None
    msg = gp.size_problem(720, 960, rng, ((736, 960), (1024, 2048)))
    assert msg == ("images of 720x960: this model takes H and W multiples of 32 from 256x256 to 1024x2048 (captured "
                   "at load: 736x960, 1024x2048); pad the frame to 736x960 (bottom/right), as python -m client.segment "
                   "does")
    assert "scale the frame into that range" in gp.size_problem(2048, 2048, rng)


class _Capture:
    def __init__(self):
        self.calls = []

    def __call__(self, size, buckets):
        self.calls.append((size, buckets))
        return ("runner", size, buckets)


def test_graph_cache_pins_listed_sizes_and_keeps_at_most_cap_others_least_recently_used_first():
    cap, hooks = _Capture(), []
    cache = gp.GraphCache(cap, (1, 2, 4, 8, 16), cap=2, before_capture=lambda: hooks.append(1))
    cache.pin((736, 960))
    assert cap.calls == [((736, 960), (1, 2, 4, 8, 16))] and cache.captured == 5
    assert cache.get(3, (736, 960)) == ("runner", (736, 960), (1, 2, 4, 8, 16))  # pinned: every bucket, no capture
    a = cache.get(3, (512, 512))  # captured for bucket 4 only
    assert a == ("runner", (512, 512), (4,))
    b = cache.get(16, (512, 512))
    assert b == ("runner", (512, 512), (16,))
    assert cache.get(4, (512, 512)) is a  # bucket 4 again: no capture; now the most recent
    cache.get(1, (256, 256))  # a third lazy entry: (16, 512x512) is the least recently used, dropped
    assert list(cache.lazy) == [(4, (512, 512)), (1, (256, 256))] and cache.evicted == 1
    assert cache.get(9, (512, 512)) == ("runner", (512, 512), (16,)) and cache.evicted == 2  # captured again
    assert (736, 960) in cache.kept and len(cap.calls) == 5 and len(hooks) == 5  # the hook before every capture
    with pytest.raises(ValueError, match="larger than the largest bucket 16"):
        cache.get(17, (512, 512))


def test_graph_cache_without_cap_serves_only_its_pinned_sizes():
    cache = gp.GraphCache(_Capture(), (1, 2), cap=0)
    cache.pin((64, 64))
    assert cache.serves((64, 64)) and not cache.serves((96, 96))
    with pytest.raises(ValueError, match="images of 96x96: this model serves only 64x64"):
        cache.get(1, (96, 96))


def test_host_pool_hands_a_buffer_out_again_only_after_it_comes_back():
    made = []
    pool = gp.HostPool(lambda n: made.append(n) or torch.empty(n, dtype=torch.uint8), 2, minimum=100)
    a, b = pool.acquire(10), pool.acquire(300)
    assert made == [100, 300]
    got = []
    t = threading.Thread(target=lambda: got.append(pool.acquire(50)))
    t.start()
    t.join(0.2)
    assert not got  # both buffers out: the third batch waits for its buffer
    pool.release(a)
    t.join(5)
    assert got and got[0] is a and made == [100, 300]  # reused, not reallocated
    pool.release(b)
    assert pool.acquire(400) is not b and made[-1] == 400  # too small: replaced by a larger one


def test_responder_runs_jobs_in_order_and_survives_a_failing_one():
    done, logs = [], []
    r = gp.Responder(log=logs.append)
    r.submit(lambda: done.append(1))
    r.submit(lambda: 1 / 0)
    r.submit(lambda: done.append(2))
    r.drain()
    assert done == [1, 2] and logs == ["responder: ZeroDivisionError: division by zero"]
    r.close()
    assert not r.thread.is_alive()


def test_stage_line_averages_per_batch_wall_and_gpu_milliseconds():
    st = gp.StageStats(every=2)
    wall = {"parse": 0.001, "decode": 0.004, "fit": 0.0005, "upload": 0.0, "model": 0.0002, "d2h": 0.0,
            "responses": 0.002, "execute": 0.008, "wait": 0.0015}
    gpu = {"decode": 3.0, "fit": 0.25, "upload": 0.0, "model": 11.5, "d2h": 0.5}
    assert st.add(12, wall, gpu, {"raws": 1, "raw_gpu": 1}) is None
    line = st.add(14, wall, gpu, {"raws": 1, "raw_gpu": 0}, notes={"decoder": "nvImageCodec"})
    assert line == ("[segformer_gpu] 2 batches, 13.0 img/batch; ms per batch (wall/GPU): parse 1.00, decode 4.00/3.00, "
                    "fit 0.50/0.25, upload 0.00/0.00, model 0.20/11.50, D2H 0.00/0.50, responses 2.00; execute 8.00, "
                    "waiting on the GPU 1.50; raw requests on the GPU 1 of 2; decoder nvImageCodec")
    assert "wall/GPU" not in gp.StageStats().line()  # no GPU events (timing off): wall only
