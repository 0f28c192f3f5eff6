"""The automatic plan reads the GPU's memory: PyTorch's cache from an earlier job must not change it."""

import torch

from seedvr.pipeline import RestoreOptions, make_plan
from seedvr.pipeline.restore import RestorationModels, memory_budget

GIB = 1 << 30


class CachingGpu:
    """What the driver and PyTorch's caching allocator report on an 80 GB GPU holding a 10 GB model.

    A job's activations are freed when it ends but stay reserved (cached), so the driver counts them
    as used until `empty_cache`.
    """

    def __init__(self, total: int = 80 * GIB, model: int = 10 * GIB):
        self.total, self.allocated, self.reserved = total, model, model

    def mem_get_info(self, device=None) -> tuple[int, int]:
        return self.total - self.reserved, self.total

    def memory_reserved(self, device=None) -> int:
        return self.reserved

    def memory_allocated(self, device=None) -> int:
        return self.allocated

    def run_job(self, budget: int) -> None:
        """The job fills its budget; afterwards only the cache remembers it."""
        self.reserved = max(self.reserved, self.allocated + budget)


def test_same_request_gets_the_same_plan_after_other_jobs(monkeypatch):
    gpu = CachingGpu()
    for name in ("mem_get_info", "memory_reserved", "memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, getattr(gpu, name))
    models = RestorationModels(dit=None, vae=None, text_emb=None, device="cuda", dtype=torch.bfloat16)
    full_hd, uhd = RestoreOptions(res_h=1080, res_w=1920), RestoreOptions(res_h=2160, res_w=3840)

    def job(options: RestoreOptions):
        plan = make_plan(540, 960, 300, models, options)
        gpu.run_job(memory_budget("cuda"))
        return plan

    first = job(full_hd)
    job(uhd)  # another, larger job between the two identical ones
    second = job(full_hd)
    assert gpu.reserved > gpu.allocated  # the cache is there, and the driver counts it as used
    assert 5 < first.window < 101  # the window follows the budget here, so a smaller budget shows
    assert (second.window, second.overlap, second.tiling) == (first.window, first.overlap, first.tiling)
    assert memory_budget("cuda") == int((gpu.total - gpu.allocated) * 0.7)
