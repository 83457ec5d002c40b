"""bench.perf.epoch_ranks on a real Optuna journal storage with known learning curves."""

from __future__ import annotations

import optuna
import pytest

from bench import tags as T
from bench.errors import BenchError
from bench.perf.epoch_ranks import epoch_agreement
from bench.storage import open_storage, parse_storage
from tests.bench.helpers import main_in_process

# stratum -> curves of its trials (val/elbo after epochs 1, 2, 3): in stratum 2 the first two cross after epoch 1
CURVES = {
    2: [[-150.0, -140.0, -130.0], [-149.0, -141.0, -131.0], [-160.0, -155.0, -150.0]],
    8: [[-120.0, -110.0, -100.0], [-130.0, -120.0, -115.0]],
}


def _study(tmp_path) -> tuple[str, optuna.Study]:
    path = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="ranks", storage=open_storage(parse_storage(path)), direction="maximize")
    for stratum, curves in CURVES.items():
        for curve in curves:
            trial = study.ask()
            trial.set_user_attr(T.STRATUM_ATTR, stratum)
            for epoch, value in enumerate(curve, start=1):
                trial.report(value, epoch)
            study.tell(trial, curve[-1])
    return path, study


def test_pairs_and_bests_that_keep_their_order(tmp_path):
    _, study = _study(tmp_path)
    rows = epoch_agreement(study.get_trials())
    assert [(r.k, r.pairs_kept, r.pairs, r.best_kept, r.strata) for r in rows] == [(1, 3, 4, 1, 2), (2, 4, 4, 2, 2)]
    assert rows[0].swaps == ((2, 1.0, 1.0),)


def test_a_pruned_curve_is_refused(tmp_path):
    _, study = _study(tmp_path)
    trial = study.ask()
    trial.set_user_attr(T.STRATUM_ATTR, 2)
    trial.report(-150.0, 1)
    study.tell(trial, -150.0)
    with pytest.raises(BenchError, match="different numbers of epochs"):
        epoch_agreement(study.get_trials())


def test_cli_prints_the_rows_and_refuses_an_unknown_study(tmp_path, capfd, monkeypatch):
    path, _ = _study(tmp_path)
    code, out, _ = main_in_process("bench.perf.epoch_ranks", ["--study", "ranks", path], capfd, monkeypatch)
    assert code == 0 and out.splitlines()[1].startswith("k=2: 4/4 pairs keep their order") and "2/2 strata" in out
    code, _, err = main_in_process("bench.perf.epoch_ranks", ["--study", "nope", path], capfd, monkeypatch)
    assert code == 2 and "no study 'nope'" in err and len(err.strip().splitlines()) == 1


def test_help_says_the_study_is_required(capfd, monkeypatch):
    code, out, _ = main_in_process("bench.perf.epoch_ranks", ["--help"], capfd, monkeypatch)
    assert code == 0 and "the study's name in the storage (required)" in out and "default: None" not in out


def test_a_missing_storage_file_is_refused_and_not_created(tmp_path, capfd, monkeypatch):
    missing = tmp_path / "none.journal"
    code, _, err = main_in_process("bench.perf.epoch_ranks", ["--study", "ranks", str(missing)], capfd, monkeypatch)
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
    assert not missing.exists()
    db = tmp_path / "none.db"
    argv = ["--study", "ranks", f"sqlite:///{db}"]
    code, _, err = main_in_process("bench.perf.epoch_ranks", argv, capfd, monkeypatch)
    assert code == 2 and "no such file" in err and not db.exists()
