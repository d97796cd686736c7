"""lrdlab.measure.allocator: freed memory kept by glibc's malloc, opt-in (each check in its own process: the
setting is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lrdlab.measure import allocator

STEPS = """
import json, resource, sys
from lrdlab.measure.allocator import freed_memory_kept, keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "kept" else False
import torch
torch.manual_seed(0)
torch.set_num_threads(1)
head = torch.nn.Linear(32, 49152, bias=False)  # a language model's head: 100 MB of logits and their gradient a step
opt = torch.optim.AdamW(head.parameters())
x, y = torch.randn(512, 32), torch.randint(0, 49152, (512,))
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.nn.functional.cross_entropy(head(x), y).backward()
    opt.step()
    opt.zero_grad()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"took": took, "kept": freed_memory_kept(), "faults": faults}))
"""


def steps(setting: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS, setting], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_kept_memory_is_faulted_in_at_the_first_steps_not_at_every_step():
    default, kept = steps("default"), steps("kept")
    assert default["took"] is False and default["kept"] is False
    assert kept["took"] is True and kept["kept"] is True
    logits_pages = 512 * 49152 * 4 // 4096
    assert min(default["faults"][-4:]) >= logits_pages  # glibc maps the logits afresh: every page faults every step
    assert sum(kept["faults"][-4:]) < sum(default["faults"][-4:]) / 4  # the heap kept them: later steps fault little


def test_elsewhere_nothing_changes(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
    assert allocator.freed_memory_kept() is False
