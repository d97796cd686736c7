"""The browser latency recorder's moves: the explorer's own start, settings on the shipped grid, first visits where
it says so, real layers; and the shipped record's summary follows from its moves."""

import inspect
import statistics

import pytest

from lrdlab.explore import rank_lab, widgets
from lrdlab.measure.records import data_dir, read_record
from tools.record import explorer_grids, slider_latency


def _settings():
    """The (α, g, rounding) after each of MOVES, from the explorer's default start."""
    defaults = inspect.signature(widgets.RankExplorer).parameters
    setting = [defaults["ratio"].default, defaults["granularity"].default, defaults["rounding"].default]
    out = []
    for _what, control, how in slider_latency.MOVES:
        if control == "lrd-rounding":
            setting[2] = how
        else:
            i, values = (0, rank_lab.RATIOS) if control == "lrd-ratio" else (1, rank_lab.GRANULARITIES)
            setting[i] = values[values.index(setting[i]) + (1 if how == "ArrowRight" else -1)]
        out.append(tuple(setting))
    return tuple(defaults[k].default for k in ("ratio", "granularity", "rounding")), out


def test_every_move_lands_on_the_shipped_grid_and_first_visits_are_first():
    start, settings = _settings()
    ratios, grans, roundings = explorer_grids.GRIDS["resnet20_mnist5k"]
    seen = {start}
    for (what, _, _), setting in zip(slider_latency.MOVES, settings):
        assert setting[0] in ratios and setting[1] in grans and setting[2] in roundings, (what, setting)
        assert (setting not in seen) == ("revisit" not in what), (what, setting)
        seen.add(setting)
    assert len(slider_latency.MOVES) >= 10


def test_layer_moves_are_distinct_layers_of_the_default_model():
    names = rank_lab.RankLab().layer_names(rank_lab.DEFAULT_MODEL)
    layers = slider_latency.LAYERS
    assert len(set(layers)) == len(layers) >= 10
    assert set(layers) <= set(names) and rank_lab.DEFAULT_LAYER not in layers


def test_the_shipped_record_summarises_its_own_moves():
    path = data_dir() / "explorer_latency_chromium.json"
    if not path.exists():
        pytest.skip("not recorded yet: python -m tools.record.slider_latency")
    rec = read_record(path)
    moves = [m for m in rec["moves"] if m["kind"] in {"slider", "rounding"}]
    assert rec["summary"]["alpha_g_rounding"]["median_ms"] == round(statistics.median(m["ms"] for m in moves), 1)
    assert rec["summary"]["alpha_g_rounding"]["within_target"] == (
        statistics.median(m["ms"] for m in moves) <= rec["target_ms"])
    assert rec["machine"]["cpu"] and rec["load_average_before"]
