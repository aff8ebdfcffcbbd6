"""`--source NAME=PATH` forms: folder, file, glob pattern."""

from __future__ import annotations

import pytest

from agrifm.predict.cli import parse_sources


def test_glob_selects_some_months(tmp_path):
    for m in ("2020-11", "2020-12", "2021-01", "2021-02"):
        (tmp_path / f"S2_{m}.tif").write_bytes(b"")
    got = parse_sources([f"S2={tmp_path}/S2_2021-*.tif", f"L30={tmp_path}"])
    assert [p.rsplit("/", 1)[1] for p in got["S2"]] == ["S2_2021-01.tif", "S2_2021-02.tif"]
    assert got["L30"] == str(tmp_path)


@pytest.mark.parametrize("bad, match", [(["S2"], "NAME=PATH"), (["S2=a", "S2=b"], "twice"), (["S2=/nowhere/*.tif"], "no file")])
def test_bad_source_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_sources(bad)
