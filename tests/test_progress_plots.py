"""Progress lines in logs, training-curve figures, and class names a GIS reads."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest


def test_progress_prints_lines_not_bars_when_not_a_terminal(capsys):
    from agrifm.progress import LineProgress, progress_bar

    with progress_bar(40, "predict", "win") as bar:  # pytest's stderr is not a terminal
        assert isinstance(bar, LineProgress)
        for _ in range(40):
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[0].startswith("predict: 4/40 win (10 %)") and "40/40 win (100 %)" in lines[-1]
    assert not any("\r" in line for line in lines)


def test_progress_every_step_of_a_coarse_counter_and_silence_when_off(capsys):
    from agrifm.progress import LineProgress, progress_bar

    bar = LineProgress(3, "map", "block", every=10, file=io.StringIO())
    for _ in range(3):
        bar.update()
    assert [line.split(" (")[0] for line in bar.file.getvalue().splitlines()] == ["map: 1/3 block", "map: 2/3 block", "map: 3/3 block"]
    with progress_bar(5, "x", enabled=False) as quiet:
        quiet.update(5)
    assert capsys.readouterr().err == ""


def test_lightning_progress_on_terminal_and_in_logs(monkeypatch):
    import sys

    from agrifm import progress

    assert progress.lightning_progress(False) == (False, [])
    bar, callbacks = progress.lightning_progress(True, "train")
    assert bar is False and type(callbacks[0]).__name__ == "EpochLines"
    monkeypatch.setattr(sys, "stderr", type("Tty", (io.StringIO,), {"isatty": lambda self: True})())
    assert progress.lightning_progress(True) == (True, [])


def test_training_curves_png_and_history_round_trip(tmp_path):
    from agrifm.tasks.plots import plot_training_curves, read_history, write_history

    rows = [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5, "val_loss": 1.6, "val_oa": 0.7, "val_mf1": 0.6}]
    write_history(rows, tmp_path / "h.csv")
    back = read_history(tmp_path / "h.csv")
    assert back[0] == {"epoch": 1, "train_loss": 2.0} and back[1]["val_oa"] == 0.7
    png = plot_training_curves(back, tmp_path / "c.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no training history"):
        plot_training_curves([], tmp_path / "none.png", title="t")


def test_confusion_matrix_png_from_integer_counts(tmp_path):
    from agrifm.tasks.plots import save_confusion_matrix

    cm = np.array([[5, 1], [0, 4]])
    assert save_confusion_matrix(cm, ["a", "b"], tmp_path / "cm.png", "t").read_bytes()[:4] == b"\x89PNG"


def test_class_map_carries_category_names_and_an_attribute_table(tmp_path):
    from rasterio.transform import from_origin

    from agrifm.predict.cog import aux_xml_path, class_map_meta, read_categories, write_cog

    names, colours = ["Soy & Corn", "Forest", "Pasture"], [(255, 160, 0), (20, 100, 40), (190, 220, 90)]
    a = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    path = write_cog(tmp_path / "map.tif", a, crs="EPSG:32631", transform=from_origin(0, 0, 10, 10),
                     **class_map_meta(names, colours))
    assert read_categories(path) == names
    band = ET.parse(aux_xml_path(path)).getroot().find("PAMRasterBand")
    rat = band.find("GDALRasterAttributeTable")
    assert [f.findtext("Name") for f in rat.findall("FieldDefn")] == ["Value", "Class", "Red", "Green", "Blue", "Alpha"]
    rows = [[c.text for c in r.findall("F")] for r in rat.findall("Row")]
    assert rows[0] == ["0", "Soy & Corn", "255", "160", "0", "255"] and len(rows) == 3
    # The same path rewritten without classes drops the sidecar, whose names would now lie.
    write_cog(path.with_name("map.tif"), a, crs="EPSG:32631", transform=from_origin(0, 0, 10, 10))
    assert not aux_xml_path(path).exists() and read_categories(path) == []
