"""Search report: probability tables, heat-map, report files."""

from __future__ import annotations

import json

import torch
from PIL import Image

from strkit.nas.arch import derive_arch
from strkit.nas.report import ProbabilityHistory, cell_descriptions, probability_table, write_report
from strkit.nas.search_space import build_supernet

SPACE = {"stem_channels": 8, "first_channels": 8, "first_ops": ["k3_e1", "k5_e1"],
         "stages": [[16, 2, 2, 2]], "reduction_ops": ["k3_e2", "k5_e2"],
         "normal_ops": ["skip", "k3_e2"], "out_channels": 16}


def test_probability_table_marks_choices_and_non_candidates():
    net = build_supernet(SPACE, 1, 16, 32)
    cells = cell_descriptions(net)
    probs = [[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]]
    table = probability_table(cells, probs).splitlines()
    assert len(table) == 2 + 3
    assert table[0].split("|")[5:-1] == [" k3_e1 ", " k5_e1 ", " k3_e2 ", " k5_e2 ", " skip "]
    assert "**80.0**" in table[2] and "**60.0**" in table[3] and "**90.0**" in table[4]
    assert table[2].count("·") == 3  # the first cell has 2 of the 5 ops
    # an explicit choice overrides the argmax
    assert "**20.0**" in probability_table(cells, probs, chosen=[0, 0, 0]).splitlines()[2]


def test_history_round_trip_and_report_files(tmp_path):
    net = build_supernet(SPACE, 1, 16, 32)
    history = ProbabilityHistory()
    history.record(0, net)
    for step in (5, 10, 10):
        with torch.no_grad():
            net.cells[2].alpha[0] -= 1.0
        history.record(step, net)
    assert history.steps == [0, 5, 10]
    assert history.probs[-1][2][0] < history.probs[0][2][0]
    assert ProbabilityHistory.from_dict(json.loads(json.dumps(history.to_dict()))) == history
    arch = derive_arch(net)
    paths = write_report(tmp_path, cells=cell_descriptions(net), history=history, arch=arch,
                         figures={"predicted_ms": 1.5, "params_m": 0.01},
                         lut_validation={"n": 2, "mae_pct": 5.0, "bias_pct": -1.0,
                                         "predicted_ms": [1.0, 2.0], "measured_ms": [1.1, 1.9]})
    text = paths["markdown"].read_text()
    assert "Probabilities at the start (step 0)" in text and "Probabilities at the end (step 10)" in text
    assert "**5.0%**" in text and "k3_e2" in text and "probabilities.png" in text
    with Image.open(paths["heatmap"]) as img:
        assert img.format == "PNG" and img.size[0] > 200
    data = json.loads(paths["json"].read_text())
    assert data["chosen_ops"] == [c["op"] for c in arch["cells"]]
    assert data["end"]["step"] == 10 and data["figures"]["predicted_ms"] == 1.5
