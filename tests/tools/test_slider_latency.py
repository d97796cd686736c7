"""The browser latency recorder's moves: the explorer's own start, settings on the shipped grid, first visits where
it says so, real layers; and the shipped record's summary follows from its moves."""

import inspect

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


def test_the_recorders_summary_of_the_shipped_moves_is_the_shipped_summary():
    """The recorder's own ``summary`` (not a copy of it here) rebuilds the shipped file's summary from its moves."""
    rec = read_record(data_dir() / "explorer_latency_chromium.json")
    moves = [slider_latency.Move(**m) for m in rec["moves"]]
    assert slider_latency.summary(moves) == rec["summary"] and rec["target_ms"] == slider_latency.TARGET_MS
    assert [m.kind for m in moves].count("layer") == rec["summary"]["layer"]["moves"] == len(slider_latency.LAYERS)
    assert rec["machine"]["cpu"] and rec["load_average_before"]


def test_the_summary_is_the_median_per_kind_against_the_target():
    def move(kind, ms):
        return slider_latency.Move("m", kind, ms, True, "")

    s = slider_latency.summary([move("slider", 10.0), move("rounding", 30.0), move("slider", 500.0),
                                move("layer", 40.0)])
    assert s["alpha_g_rounding"] == {"moves": 3, "median_ms": 30.0, "max_ms": 500.0, "within_target": True}
    slow = slider_latency.summary([move("slider", 10 * slider_latency.TARGET_MS), move("layer", 1.0)])
    assert slow["alpha_g_rounding"]["within_target"] is False
