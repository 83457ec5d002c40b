"""`python -m bench.perf.scale`'s parts: the study copy it runs, the workers it starts, its refusals.

The benchmark itself is not run here (minutes); its workers are the real `python -m bench.run`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import tomllib

import pytest

from bench.perf.toml_writer import dumps
from bench.spec import available_studies, load_spec
from tests.helpers import REPO


@pytest.mark.parametrize("study", available_studies())
def test_scale_runs_a_copy_of_the_study_under_a_fresh_name(tmp_path, study):
    from bench.perf.scale import study_copy

    first, second = study_copy(study, tmp_path), study_copy(study, tmp_path)
    original, copy = load_spec(study), load_spec(str(first))
    assert copy.name == first.stem != second.stem
    assert dataclasses.replace(copy, name=original.name, path=None, text="") == dataclasses.replace(
        original, path=None, text=""
    )


def test_the_toml_writer_round_trips_what_tomllib_reads():
    doc = {
        "top": 1,
        "study": {
            "name": 'a "quoted"\\ name\twith\ncontrol \x7f and ünï 😀',
            "n_trials": -3,
            "ok": True,
            "no": False,
            "sampler": {"type": "tpe", "seed": 0},
            "pruner": {},
        },
        "search": {
            "latent_dim": {"type": "categorical", "choices": [2, 4]},
            "beta": {"type": "float", "low": 1e-05, "high": 2.5e16, "log": True},
        },
        "odd keys": {"a.b": [1.5, float("inf"), float("-inf")], "": "empty", "mixed": [{"x": 1}, [True, "s"]]},
        "empty": {},
    }
    back = tomllib.loads(dumps(doc))
    assert back == doc
    assert math.isnan(tomllib.loads(dumps({"x": float("nan")}))["x"])
    with pytest.raises(TypeError, match="cannot write a bytes"):
        dumps({"x": b"raw"})


def test_the_recovery_run_starts_its_second_worker_as_run_does_with_its_own_log(tmp_path):
    from bench.perf.scale import worker_env
    from bench.workers import spawn_workers

    with open(tmp_path / "worker-1.log", "ab") as out:
        (proc,) = spawn_workers(["--help"], 2, 1, cwd=tmp_path, env=worker_env(), stdout=out, stderr=subprocess.STDOUT)
    assert proc.wait(timeout=120) == 0
    assert (tmp_path / "worker-1.log").read_text().startswith("usage: python -m bench.run")
    assert worker_env()["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)  # the workers import this checkout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workers", "0"], "--workers must be counts between 1 and 64"),
        (["--storage-url", "postgresql://postgres@127.0.0.1:5432/optuna"], "without a database"),
        (["--n-trials", "0"], "--n-trials must be at least 1"),
    ],
)
def test_scale_refuses_bad_flags_with_one_line(argv, message, capsys):
    from bench.perf.scale import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
