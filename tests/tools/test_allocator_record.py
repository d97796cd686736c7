"""``python -m tools.record.allocator``: interleaved rounds, one process per setting, the paired speed-up."""

from __future__ import annotations

import json
import subprocess

import pytest

from tools.record import allocator


def test_rounds_alternate_the_order_and_pair_the_ratios(monkeypatch):
    calls = []
    seconds = {"default": [6.0, 9.0], "kept": [4.0, 4.5]}

    def run(cmd, **kw):
        setting = cmd[cmd.index("--child") + 1]
        assert "--threads=1" in cmd
        calls.append(setting)
        row = {"setting": setting, "s_per_step": seconds[setting].pop(0)}
        return subprocess.CompletedProcess(cmd, 0, stdout="loading…\n" + json.dumps(row) + "\n")

    monkeypatch.setattr(allocator.subprocess, "run", run)
    result = allocator.record(rounds=2, steps=3, threads=1)
    assert calls == ["default", "kept", "kept", "default"]
    assert [r["round"] for r in result["rows"]] == [0, 0, 1, 1]
    assert result["speedup_pct"]["median"] == pytest.approx(100 * ((6 / 4 + 9 / 4.5) / 2 - 1))
    assert result["speedup_pct"]["rounds"] == 2
