"""Run every notebook in full mode (``QUICK = False``) headless and record its time: ``make notebooks-full``.

Writes ``data/notebooks_full_times.json``: per notebook its wall time, whether it ran without error, and the
machine, torch threads and load averages before and after (a shared machine is slower: say so beside any time).
Each notebook's time is written as soon as it finishes, so a long run can be stopped and read. Not a test: full
mode takes minutes to tens of minutes per notebook.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "notebooks_full_times.json"


def main(names: list[str]) -> None:
    import papermill
    import torch

    from lrdlab.measure.machine import machine_info

    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    notebooks = [p for p in notebooks if not names or any(p.stem.startswith(n) for n in names)]
    result = {"what": "each notebook run headless with QUICK=False (papermill), wall time",
              "command": "make notebooks-full", "machine": machine_info("cpu"), "threads": torch.get_num_threads(),
              "note": "2-core shared machine unless the machine says otherwise: other processes may have run "
                      "(see each row's load averages)", "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for path in notebooks:
            load_before, start, error = os.getloadavg(), time.perf_counter(), None
            try:
                papermill.execute_notebook(str(path), str(Path(tmp) / path.name), parameters={"QUICK": False},
                                           cwd=str(path.parent), kernel_name="python3", progress_bar=False)
            except Exception as exc:  # noqa: BLE001 - recorded, and the next notebook still runs
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            seconds = time.perf_counter() - start
            result["rows"].append({"notebook": path.name, "seconds": round(seconds, 1), "ok": error is None,
                                   "error": error, "load_average_before": load_before,
                                   "load_average_after": os.getloadavg()})
            print(f"{path.name}: {seconds:.0f} s{'' if error is None else ' FAILED: ' + error}", flush=True)
            OUT.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
