"""A resumed study must be the study that was stored: bench.fingerprint through open_study, and the CLI.

Real Optuna journal storages in tmp_path; the CLI case resumes the session's smoke study with an edited file.
"""

from __future__ import annotations

import pytest

from bench.errors import BenchError
from bench.fingerprint import (
    CODE_FIELD,
    DIGEST_FIELD,
    code_major_version,
    fingerprint,
    first_difference,
)
from bench.spec import STUDIES_DIR, load_spec
from bench.storage import StorageTarget, open_storage
from bench.study import open_study
from tests.bench.helpers import run_cli


def journal(tmp_path):
    return open_storage(StorageTarget("journal", str(tmp_path / "optuna.journal")))


def test_fingerprint_holds_every_section_the_flags_the_data_and_the_code_version_but_not_n_trials():
    spec = load_spec("smoke")
    fp = fingerprint(spec, "abc")
    assert fp["train.epochs"] == 2 and fp["data.limit"] == 2000 and fp["model.hidden_layers"] == 1
    assert fp["study.sampler.type"] == "tpe" and fp["study.pruner.n_warmup_steps"] == 1
    assert fp["search.latent_dim.choices"] == [2, 4] and fp["search.beta.log"] is True
    assert fp["eval.ood_dataset"] == "fashion-mnist" and fp["baselines.models"] == ["ae", "pca"]
    assert fp["replicates.seeds"] == [1, 2]
    assert fp[DIGEST_FIELD] == "abc" and fp[CODE_FIELD] == code_major_version() == 0  # pyproject: 0.1.0
    assert not any(k.startswith(("study.n_trials", "study.timeout", "study.name")) for k in fp)
    # the flags change the fingerprint as the file would
    assert fingerprint(spec.with_overrides(epochs=3), "abc")["train.epochs"] == 3
    seeded = fingerprint(spec.with_overrides(seed=7), "abc")
    assert (seeded["train.seed"], seeded["study.sampler.seed"]) == (7, 7)
    assert fingerprint(spec.with_overrides(n_trials=50, timeout_s=10.0), "abc") == fp


def test_first_difference_is_named_in_file_order_and_more_replicate_seeds_are_allowed():
    spec = load_spec("smoke")
    old = fingerprint(spec, "abc")
    assert first_difference(old, old) is None
    new = fingerprint(spec.with_overrides(epochs=3, seed=5), "abc")
    assert first_difference(old, new) == "study.sampler.seed: stored 0, now 5"  # [study] comes first
    assert first_difference(old, fingerprint(spec, "xyz")) == "data.digest: stored abc, now xyz"
    assert first_difference(old, fingerprint(spec.with_overrides(replicates=3), "abc")) is None  # seeds 1, 2 -> 1, 2, 3
    assert (
        first_difference(old, fingerprint(spec.with_overrides(replicates=0), "abc"))
        == "replicates.seeds: stored [1, 2], now []"
    )


def test_an_edited_study_is_refused_on_resume_and_more_trials_are_not(tmp_path, capsys):
    spec = load_spec("smoke")
    study, created = open_study(spec, journal(tmp_path), 0, fingerprint(spec, "abc"), "here")
    assert created and study.user_attrs["fingerprint"]["train.epochs"] == 2

    with pytest.raises(BenchError) as err:
        open_study(
            spec.with_overrides(epochs=3),
            journal(tmp_path),
            0,
            fingerprint(spec.with_overrides(epochs=3), "abc"),
            "here",
        )
    assert str(err.value) == (
        "the study 'smoke' in here was run with other settings (train.epochs: stored 2, now 3); it cannot be "
        "resumed with these: use another --storage, or another study name ([study] name)"
    )
    more = spec.with_overrides(n_trials=10)
    again, created = open_study(more, journal(tmp_path), 0, fingerprint(more, "abc"), "here")
    assert not created and again.user_attrs["fingerprint"] == fingerprint(spec, "abc")
    with pytest.raises(BenchError, match=r"data\.digest: stored abc, now other"):
        open_study(spec, journal(tmp_path), 0, fingerprint(spec, "other"), "here")
    assert capsys.readouterr().out == ""


def test_a_study_stored_before_fingerprints_adopts_this_runs_with_a_notice(tmp_path, capsys):
    import optuna

    spec = load_spec("smoke")
    old, _ = open_study(spec, journal(tmp_path))  # no fingerprint: as vaebench stored studies before
    old.add_trial(optuna.trial.create_trial(value=-100.0))
    study, created = open_study(spec, journal(tmp_path), 0, fingerprint(spec, "abc"), "here")
    assert not created and study.user_attrs["fingerprint"] == fingerprint(spec, "abc")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("notice: study 'smoke' in here has no fingerprint")
    with pytest.raises(BenchError, match="train.epochs: stored 2, now 4"):  # from now on it is checked
        open_study(spec, journal(tmp_path), 0, fingerprint(spec.with_overrides(epochs=4), "abc"), "here")


def test_the_cli_refuses_an_edited_study_file_in_one_line_and_writes_nothing(smoke, tmp_path):
    run = smoke.run
    edited = tmp_path / "smoke.toml"
    edited.write_text(
        (STUDIES_DIR / "smoke.toml")
        .read_text()
        .replace("epochs = 2", "epochs = 3")
        .replace("n_trials = 3", "n_trials = 5")
    )
    before = run.optuna_study()
    runs_before = len(run.record().children)

    proc = run_cli(run.args(edited), run.cwd, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "(train.epochs: stored 2, now 3)" in proc.stderr, proc.stderr
    assert "another --storage" in proc.stderr and "another study name" in proc.stderr
    after = run.optuna_study()  # (open_study's create-or-load appends a no-op create to a journal, as on any resume)
    assert after.user_attrs == before.user_attrs and [t.number for t in after.trials] == [
        t.number for t in before.trials
    ]
    assert len(run.record().children) == runs_before
