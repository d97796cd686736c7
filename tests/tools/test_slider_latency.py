"""The browser latency recorder: real layers of the default model, the load it makes itself, and the shipped
record's summary follows from its moves through the recorder's own ``summary``."""

from lrdlab.explore import rank_lab
from lrdlab.measure.records import data_dir, read_record
from tools.record import slider_latency


def test_layer_moves_are_distinct_layers_of_the_default_model():
    names = rank_lab.RankLab().layer_names(rank_lab.DEFAULT_MODEL)
    layers = slider_latency.LAYERS
    assert len(set(layers)) == len(layers) >= 10
    assert set(layers) <= set(names) and rank_lab.DEFAULT_LAYER not in layers


def test_every_control_is_moved():
    controls = {c for _, c, _ in slider_latency.MOVES + slider_latency.FAST}
    assert controls == {"lrd-ratio", "lrd-granularity", "lrd-rounding"}
    assert len(slider_latency.MOVES) >= 10


def test_the_recorders_summary_of_the_shipped_moves_is_the_shipped_summary():
    """The recorder's own ``summary`` (not a copy of it here) rebuilds the shipped file's summary from its moves."""
    rec = read_record(data_dir() / "explorer_latency_chromium.json")
    moves = [slider_latency.Move(**m) for m in rec["moves"]]
    assert slider_latency.summary(moves) == rec["summary"]
    assert rec["target_median_ms"] == slider_latency.TARGET_MS and rec["target_max_ms"] == slider_latency.MAX_MS
    held = [s["meets_goal"] for s in rec["summary"].values() if s.get("held_to_goal", True)]
    assert rec["meets_goal"] == all(held) and len(held) >= 7  # every control but a model's first load
    assert rec["machine"]["cpu"] and rec["load_average_found"] and "spinning" in rec["load_made"]


def test_the_summary_is_the_median_and_max_per_control_against_the_goal():
    def move(control, ms, on_grid=True):
        return slider_latency.Move(control, "s", on_grid, ms, "")

    s = slider_latency.summary([move("α", 10.0), move("α", 30.0, on_grid=False), move("α", 50.0),
                                move("layer", 40.0)])
    assert s["α"] == {"moves": 3, "median_ms": 30.0, "max_ms": 50.0, "off_grid_moves": 1, "meets_goal": True}
    assert s["layer"]["moves"] == 1
    slow = slider_latency.summary([move("α", 1.0), move("α", 2.0), move("α", 10 * slider_latency.MAX_MS)])
    assert slow["α"]["median_ms"] == 2.0 and slow["α"]["meets_goal"] is False


def test_a_models_first_load_is_reported_apart_and_not_held_to_the_goal():
    moves = [slider_latency.Move(slider_latency.FIRST_LOAD, "s", True, 20_000.0, ""),
             slider_latency.Move("model", "s", True, 120.0, "")]
    s = slider_latency.summary(moves)
    assert s[slider_latency.FIRST_LOAD]["held_to_goal"] is False and s[slider_latency.FIRST_LOAD]["max_ms"] == 20_000
    assert s["model"]["meets_goal"] is True
