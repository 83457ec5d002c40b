"""The gate's statistics: the band, the detectable shift, the verdicts, the false-alarm estimate, the file."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from bench.errors import BenchError
from bench.gate import GATED
from bench.thresholds import (
    DEFAULT_THRESHOLDS,
    GateReference,
    Reference,
    calibrate,
    choose_gate_seeds,
    empirical_false_alarm,
    judge,
    load_reference,
    write_reference,
)

Z_9992 = 3.1444  # standard normal quantile at 1 - 0.01 / 12 (two-sided, Bonferroni over 6 metrics)


def test_band_is_t_times_the_noise_of_a_difference_of_means():
    r = Reference("vae", "test/elbo", -130.0, 0.5, 32)
    noise = 0.5 * math.sqrt(1 / 8 + 1 / 32)
    assert r.noise(8) == pytest.approx(noise)
    t = r.band(8, 6) / noise
    assert 3.3 < t < 3.5  # t with 31 df is a little wider than the normal's 3.144
    big = Reference("vae", "test/elbo", -130.0, 0.5, 10**7)  # with a huge n, t becomes z
    assert big.band(8, 6) == pytest.approx(Z_9992 * 0.5 * math.sqrt(1 / 8), rel=1e-3)
    # caught with 95 % probability: the band plus 1.645 noise
    assert big.detectable(8, 6) == pytest.approx((Z_9992 + 1.6449) * 0.5 * math.sqrt(1 / 8), rel=1e-3)


def test_band_never_narrower_than_the_floor():
    r = Reference("pca", "test/code_recon_bce", 137.5, 0.0001, 32)
    assert r.band(8, 6, floor=0.02) == 0.02


def _ref(*refs: Reference) -> GateReference:
    return GateReference(tuple(refs), tuple(range(4)))


@pytest.mark.parametrize(
    "metric, shift, expected",
    [
        ("test/elbo", 0.0, "pass"),
        ("test/elbo", -2.0, "worse"),  # ELBO: higher is better
        ("test/elbo", +2.0, "better"),  # an inflated ELBO fails too
        ("test/nll_iw", +2.0, "worse"),  # NLL: lower is better
        ("test/nll_iw", -2.0, "better"),
    ],
)
def test_verdicts_are_two_sided_and_follow_the_metrics_direction(metric, shift, expected):
    ref = _ref(Reference("vae", metric, 100.0, 0.5, 30))
    seeds = [{("vae", metric): 100.0 + shift + d} for d in (-0.1, 0.1, -0.05, 0.05)]
    (v,) = judge(ref, seeds)
    assert v.value == pytest.approx(100.0 + shift)
    assert v.result == expected


def test_a_metric_missing_from_a_seed_fails_as_missing():
    ref = _ref(Reference("vae", "test/elbo", 100.0, 0.5, 30))
    (v,) = judge(ref, [{("vae", "test/elbo"): 100.0}, {}])
    assert v.value is None and v.result == "missing"


def _gaussian_seeds(n: int, seed: int = 1, outlier: float | None = None):
    rng = random.Random(seed)
    vals = [{k: rng.gauss(0.0, 1.0) for k in GATED} for _ in range(n)]
    if outlier is not None:
        vals[0][GATED[0]] = outlier
    return vals


def test_empirical_false_alarm_matches_alpha_for_gaussian_seeds():
    fa = empirical_false_alarm(_gaussian_seeds(32), list(GATED), k=8, resamples=20_000)
    assert 0.004 < fa < 0.02  # 1 % by construction; this draw of 32 seeds gives about that


def test_empirical_false_alarm_sees_a_heavy_tail():
    # one seed 10 sd away: whenever it lands among the gate's 8 seeds their mean moves by 1.25 sd,
    # which normal theory does not expect; the resampled estimate shows the excess
    clean = empirical_false_alarm(_gaussian_seeds(32), list(GATED), k=8, resamples=20_000)
    heavy = empirical_false_alarm(_gaussian_seeds(32, outlier=10.0), list(GATED), k=8, resamples=20_000)
    assert heavy > 0.04 and heavy > 3 * clean


def test_empirical_false_alarm_needs_enough_seeds():
    with pytest.raises(ValueError, match="at least k \\+ 3"):
        empirical_false_alarm(_gaussian_seeds(10), list(GATED), k=8)


def test_calibrate_then_write_then_load_round_trips(tmp_path):
    seeds = _gaussian_seeds(6)
    refs = calibrate(seeds, list(GATED))
    vals = [s[GATED[0]] for s in seeds]
    assert refs[0].mean == pytest.approx(statistics.fmean(vals)) and refs[0].sd == pytest.approx(statistics.stdev(vals))
    ref = GateReference(refs, (0, 1, 2), 0.01, 0.02, 0.0123, {"command": "x", "seeds": [1, 2]})
    write_reference(tmp_path / "r.toml", ref)
    back = load_reference(tmp_path / "r.toml")
    assert back.seeds == (0, 1, 2) and back.false_alarm_empirical == 0.0123 and back.m == len(GATED)
    assert [(r.model, r.metric, r.n) for r in back.references] == [(r.model, r.metric, r.n) for r in refs]
    assert back.references[0].mean == pytest.approx(refs[0].mean, abs=1e-6)


def test_shipped_reference_has_the_power_the_gate_promises():
    ref = load_reference(DEFAULT_THRESHOLDS)
    assert {(r.model, r.metric) for r in ref.references} == set(GATED)
    cal = set(ref.provenance["calibration_seeds"])
    assert len(cal) >= 30 and set(ref.seeds) <= cal and len(ref.seeds) == 16
    k = len(ref.seeds)
    elbo = next(r for r in ref.references if r.metric == "test/elbo")
    assert (
        elbo.detectable(k, ref.m) <= 1.0
    )  # nats of VAE test ELBO, caught 95 % of the time (the issue asks 1.5, aims at 1)
    assert ref.false_alarm_empirical is not None and ref.false_alarm_empirical <= 0.01


@pytest.mark.parametrize(
    "text, message",
    [
        ("[gate]\nseeds = [0, 1]\n", "at least one [[reference]]"),
        ("[[reference]]\nmodel = 'vae'\nmetric = 'test/elbo'\nmean = 1\nsd = 1\nn = 5\n", "needs a [gate] table"),
        (
            "[gate]\nseeds = [0, 0]\n[[reference]]\nmodel = 'vae'\nmetric = 'test/elbo'\nmean = 1\nsd = 1\nn = 5\n",
            "distinct",
        ),
        (
            "[gate]\nseeds = [0, 1]\n[[reference]]\nmodel = 'vae'\nmetric = 'test/nope'\nmean = 1\nsd = 1\nn = 5\n",
            "not a declared metric",
        ),
        (
            "[gate]\nseeds = [0, 1]\n[[reference]]\nmodel = 'pca'\nmetric = 'test/elbo'\nmean = 1\nsd = 1\nn = 5\n",
            "does not log",
        ),
        (
            "[gate]\nseeds = [0, 1]\n[[reference]]\nmodel = 'vae'\nmetric = 'test/elbo'\nmean = 1\nsd = -1\nn = 5\n",
            "sd a number >= 0",
        ),
        ("[gate]\nseeds = [0, 1]\n[[reference]]\nmodel = 'vae'\nmetric = 'test/elbo'\nmean = 1\nsd = 1\n", "missing n"),
        (
            "[gate]\nseeds = [0, 1]\nalpha = 2\n[[reference]]\nmodel = 'vae'\n"
            "metric = 'test/elbo'\nmean = 1\nsd = 1\nn = 5\n",
            "alpha",
        ),
        ("[gate\n", "TOML syntax error"),
    ],
)
def test_malformed_reference_is_refused_in_one_line(tmp_path, text, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(BenchError) as err:
        load_reference(bad)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_gate_seeds_are_the_subset_centred_on_the_calibration_means():
    seeds = list(range(100, 132))
    vals = _gaussian_seeds(32, seed=3)
    chosen = choose_gate_seeds(vals, seeds, list(GATED), k=8, tries=50_000)
    assert len(chosen) == 8 and set(chosen) <= set(seeds)
    for key in GATED:
        allv = [v[key] for v in vals]
        sub = [vals[seeds.index(s)][key] for s in chosen]
        # within a fifth of the noise of a mean of 8 seeds (sd / sqrt(8)) of the calibration mean;
        # a random 8 of these 32 seeds is off by up to 0.48 sd, i.e. 1.4 times that noise
        assert abs(statistics.fmean(sub) - statistics.fmean(allv)) < 0.2 * statistics.stdev(allv) / math.sqrt(8)
    assert choose_gate_seeds(vals, seeds, list(GATED), k=8, tries=50_000) == chosen  # seeded: repeatable
