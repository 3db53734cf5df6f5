"""The run folder (issue 20, items 5 and 7): no silent overwrite, exact metrics on resume, no stale temporaries."""

from __future__ import annotations

import csv
import logging
import tempfile
from pathlib import Path

import pytest

from strkit.checkpoint import atomic_torch_save, load_checkpoint, stale_temporaries
from strkit.config import load_config
from strkit.engine.run_dir import RunDirError, prepare_out_dir, trim_metrics

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(data: Path, out: Path, steps: int, *extra: str):
    return load_config(REPO / "configs" / "models" / "mbv2-ctc.yaml", [
        f"data.train=[{{path: {data}, kind: folder, name: words}}]", "data.val_fraction=0",
        "data.workers=0", "data.augment=none", f"train.steps={steps}", "train.batch_size=4",
        "train.val_every=1000", f"train.save_every={steps}", "train.log_every=1", "train.progress=false",
        "train.tensorboard=false", "train.threads=1", f"train.out_dir={out}", *extra])


def steps_logged(out: Path, key: str = "loss") -> list[int]:
    with (out / "metrics.csv").open() as fh:
        return [int(float(r["step"])) for r in csv.DictReader(fh) if r["key"] == key]


def checkpoint_temporary(folder: Path, name: str = "last.pt") -> Path:
    """A temporary exactly as a killed atomic_torch_save leaves it (same mkstemp call)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    with open(fd, "wb") as fh:
        fh.write(b"half a checkpoint")
    return Path(tmp)


def test_existing_run_is_refused_without_resume_or_overwrite(word_folder, tmp_path, caplog):
    from strkit.engine.trainer import Trainer

    out = tmp_path / "run"
    Trainer(tiny_config(word_folder, out, 2)).fit()
    first = load_checkpoint(out / "last.pt")["state_dict"]
    before = (out / "metrics.csv").read_text()
    with pytest.raises(RunDirError, match=r"already holds a run \(last.pt, metrics.csv\).*--resume.*--overwrite"):
        Trainer(tiny_config(word_folder, out, 2)).fit()
    assert (out / "metrics.csv").read_text() == before  # nothing appended, nothing replaced
    assert all((v == first[k]).all() for k, v in load_checkpoint(out / "last.pt")["state_dict"].items())

    stale = checkpoint_temporary(out)
    with caplog.at_level(logging.INFO, logger="strkit"):
        Trainer(tiny_config(word_folder, out, 3), overwrite=True).fit()
    assert steps_logged(out) == [1, 2, 3]  # a fresh metrics.csv, not the old rows plus new ones
    assert load_checkpoint(out / "last.pt")["step"] == 3
    assert not stale.exists() and "temporary file(s) of interrupted checkpoint writes" in caplog.text


def test_resume_trims_metrics_and_says_where_it_resumed(word_folder, tmp_path, caplog):
    from strkit.engine.trainer import Trainer

    out = tmp_path / "run"
    first = Trainer(tiny_config(word_folder, out, 5, "train.save_every=3"))
    first.cfg.train.steps = 3  # stop the loop at step 3 (the schedule keeps its 5 steps)
    first.fit()
    # a killed run logs steps past its last checkpoint (step 3), and leaves a checkpoint temporary
    with (out / "metrics.csv").open("a", newline="") as fh:
        csv.writer(fh).writerows([[4, "loss", 9.0], [5, "loss", 9.0], [5, "lr", 0.1]])
    stale = checkpoint_temporary(out)
    with caplog.at_level(logging.INFO, logger="strkit"):
        Trainer(tiny_config(word_folder, out, 5), resume=out / "last.pt").fit()
    assert f"resumed from {out / 'last.pt'} at step 3" in caplog.text
    assert steps_logged(out) == [1, 2, 3, 4, 5]  # steps 4 and 5 once, from the resumed run
    assert 9.0 not in [float(r["value"]) for r in csv.DictReader((out / "metrics.csv").open())]
    assert not stale.exists()


def test_cli_refuses_an_existing_run(word_folder, tmp_path, capsys):
    from strkit.cli import train as cli

    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"an earlier run's model")
    args = [str(REPO / "configs" / "models" / "mbv2-ctc.yaml"), f"train.out_dir={out}",
            f"data.train=[{{path: {word_folder}, kind: folder}}]", "train.steps=1", "train.progress=false",
            "train.tensorboard=false", "data.workers=0", "train.batch_size=4", "data.val_fraction=0"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run (best.pt)" in err and "--overwrite" in err
    assert (out / "best.pt").read_bytes() == b"an earlier run's model"
    assert cli.main([*args, "--overwrite"]) == 0
    assert load_checkpoint(out / "last.pt")["step"] == 1 and not (out / "best.pt").exists()


def test_prepare_out_dir_units(tmp_path):
    out = tmp_path / "run"
    prepare_out_dir(out)  # a new folder: nothing to refuse, nothing to remove
    out.mkdir()
    (out / "config.yaml").write_text("x: 1\n")
    prepare_out_dir(out)  # a config alone is not a run
    with pytest.raises(RunDirError, match="exclude each other"):
        prepare_out_dir(out, resume_step=3, overwrite=True)
    keep = [out / ".notes.tmp", out / "last.pt.tmp", out / ".data.abcd1234.tmp", out / ".last.pt.tmp"]
    for path in keep:
        path.write_text("not ours")
    (out / "sub").mkdir()
    nested = checkpoint_temporary(out / "sub")
    ours = [checkpoint_temporary(out, "last.pt"), checkpoint_temporary(out, "best.pt")]
    assert sorted(stale_temporaries(out)) == sorted(ours)
    prepare_out_dir(out)
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in keep) and nested.exists()
    atomic_torch_save({"a": 1}, out / "last.pt")  # the real writer's temporary name matches the pattern
    assert stale_temporaries(out) == []


def test_trim_metrics(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,key,value\n1,loss,2.0\n2,loss,1.5\n2,val_accuracy,10\n3,loss,1.0\n")
    assert trim_metrics(path, 2) == 1
    assert path.read_text().splitlines() == ["step,key,value", "1,loss,2.0", "2,loss,1.5", "2,val_accuracy,10"]
    assert trim_metrics(path, 5) == 0 and trim_metrics(tmp_path / "missing.csv", 1) == 0
