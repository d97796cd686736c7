"""The F11 accuracy study (lrdlab.paper.accuracy_study): rows on the shipped model, and its figure."""

import pytest

from lrdlab.explore.recorded import data_dir


@pytest.mark.slow
def test_accuracy_study_rows_on_the_shipped_resnet20():
    from lrdlab.paper.accuracy_study import run_accuracy_study

    result = run_accuracy_study(["resnet20"], [2.0], calibration_images=128, finetune_epochs=0, progress=False)
    assert "data+bn" in str(result) and "<table" in result._repr_html_()
    acc = {r["variant"]: r["accuracy"] for r in result.rows}
    assert set(acc) == {"original", "weights", "weights+bn", "data", "data+bn"}
    assert acc["data+bn"] > acc["weights+bn"] > acc["weights"]
    row = result.rows[1]
    assert row["params"] < row["params_original"] and row["flops"] < row["flops_original"]
    assert result.settings["calibration_images"] == 128 and "cpu" in result.machine
    assert result.to_dict()["rows"] == result.rows  # the recorded JSON form


def test_f11_plot_from_the_recorded_study():
    import matplotlib

    matplotlib.use("Agg")

    from lrdlab.explore.plots import plot_accuracy_study

    path = data_dir() / "accuracy_f11_mnist5k.json"
    fig = plot_accuracy_study(path, "resnet20")
    ax, twin = fig.axes
    assert len(ax.get_lines()) == 1 + 5 and len(twin.get_lines()) == 2
    with pytest.raises(ValueError, match="no rows"):
        plot_accuracy_study(path, "resnet56")
    from lrdlab.measure.records import read_record
    from lrdlab.paper.accuracy_study import AccuracyStudy

    rec = read_record(path)
    study = AccuracyStudy(rows=rec["rows"], settings=rec["settings"], machine=rec["machine"])
    assert len(plot_accuracy_study(study, "resnet20").axes[0].get_lines()) == 1 + 5  # the record plots as its JSON
    assert "resnet20" in str(study) and "data+bn" in str(study) and "seconds" in study._repr_html_()


def test_report_renders_f11_per_model(tmp_path):
    import json

    import matplotlib

    matplotlib.use("Agg")

    from lrdlab.paper.report import Report
    from lrdlab.paper.tables import render_accuracy

    res = json.loads((data_dir() / "accuracy_f11_mnist5k.json").read_text())
    resnet = [r for r in res["rows"] if r["model"] == "resnet20"]
    res["rows"] = resnet + [{**r, "model": "vit_tiny"} for r in resnet]  # a second model, same numbers
    report = Report(tmp_path / "r", "t")
    render_accuracy(report, res)
    text = report.markdown()
    assert "trained ResNet-20" in text and "trained ViT-tiny" in text
    assert sorted(p.name for p in (tmp_path / "r" / "figures").glob("F11*")) == [
        "F11_accuracy_resnet20.png", "F11_accuracy_vit_tiny.png"]
