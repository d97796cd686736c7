"""Background work yields to a move: the gate, the module hook that pauses a torch job, the lower priority."""

import os
import threading

import torch
from torch import nn

from lrdlab.explore.background import Foreground, lower_priority, pausing_modules


def test_background_waits_while_a_move_runs_and_for_the_grace_after_it():
    gate, order = Foreground(grace_s=0.2), []
    started = threading.Event()

    def background():
        started.set()
        gate.pause()
        order.append("background")

    with gate.move():
        worker = threading.Thread(target=background)
        worker.start()
        assert started.wait(10)
        worker.join(0.3)
        assert worker.is_alive() and gate.busy()  # held while the move runs
        order.append("move")
    worker.join(10)
    assert order == ["move", "background"]
    gate.pause()  # after the grace
    assert not gate.busy()


def test_module_forwards_of_the_job_thread_pause_and_other_threads_do_not():
    gate = Foreground(grace_s=0.0)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    calls: list[str] = []
    entered = threading.Event()

    def job():
        with pausing_modules(gate):
            entered.set()
            net(torch.zeros(1, 4))
            calls.append("job")

    with gate.move():
        worker = threading.Thread(target=job)
        worker.start()
        assert entered.wait(10)
        worker.join(0.3)
        assert worker.is_alive()  # waiting before its first module
        net(torch.zeros(1, 4))  # this thread's forwards run although the hook is installed
        calls.append("foreground")
    worker.join(10)
    assert calls == ["foreground", "job"]
    assert not torch.nn.modules.module._global_forward_pre_hooks  # the hook is gone afterwards


def test_lower_priority_lowers_only_the_calling_thread():
    if not hasattr(os, "getpriority"):
        return
    before, seen = os.getpriority(os.PRIO_PROCESS, 0), {}

    def worker():
        seen["lowered"] = lower_priority(3)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, 0)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
    if seen["lowered"]:
        assert seen["nice"] == min(before + 3, 19)
