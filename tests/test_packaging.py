"""The wheel carries the data files the library reads at run time (synthetic presets, font lists,\ncolour palettes)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_synth_presets_and_font_lists(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path)], check=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("strkit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in ("clean", "mjsynth", "hard", "realistic"):
        assert f"strkit/data/synth/presets/{preset}.yaml" in names
    for lst in ("allowlist", "blocklist", "capsonly", "debian-packages"):
        assert f"strkit/data/synth/fontlists/{lst}.txt" in names
    assert "strkit/data/synth/palettes/real.json" in names
    assert not any(n.startswith(("tests/", "configs/")) for n in names)
