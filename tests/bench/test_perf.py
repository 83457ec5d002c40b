"""bench.perf's arithmetic and its reference: the floor's FLOP count, and that the
pytorch/examples model scores the same loss as this project's VAE. Values, not timings."""

from __future__ import annotations

import pytest
import torch

from bench.perf.__main__ import parse_args
from bench.perf.examples import ExamplesVAE, denormals_kept, examples_loss
from bench.perf.flops import epoch_matmul_flops
from bench.perf.reference import REFERENCE_MODEL
from vae.denormal import flush_denormal, flush_denormal_enabled
from vae.model import build_model


def test_epoch_flops_of_the_reference_model_match_a_hand_count():
    # per image, forward: 784*400 + 400*40 + 20*400 + 400*784 multiply-adds; backward: the same again for
    # the weight gradients, plus input gradients of every layer but the first
    forward = 784 * 400 + 400 * 40 + 20 * 400 + 400 * 784
    input_grads = 400 * 40 + 20 * 400 + 400 * 784
    per_image = 2 * (2 * forward + input_grads)
    assert per_image == 3_280_000
    assert epoch_matmul_flops(REFERENCE_MODEL, 60_000, 128) == 60_000 * per_image  # the last, smaller batch too


def test_the_examples_model_and_loss_give_this_projects_negative_elbo():
    torch.manual_seed(0)
    ours = build_model("vae", REFERENCE_MODEL)
    theirs = ExamplesVAE()
    enc1, enc2 = ours.encoder[0], ours.encoder[2]  # 784-400 and 400-(20 mean + 20 log-variance)
    dec1, dec2 = ours.decoder[0], ours.decoder[2]
    with torch.no_grad():
        theirs.fc1.weight.copy_(enc1.weight), theirs.fc1.bias.copy_(enc1.bias)
        theirs.fc21.weight.copy_(enc2.weight[:20]), theirs.fc21.bias.copy_(enc2.bias[:20])
        theirs.fc22.weight.copy_(enc2.weight[20:]), theirs.fc22.bias.copy_(enc2.bias[20:])
        theirs.fc3.weight.copy_(dec1.weight), theirs.fc3.bias.copy_(dec1.bias)
        theirs.fc4.weight.copy_(dec2.weight), theirs.fc4.bias.copy_(dec2.bias)
    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(1))  # grayscale targets, as the reference
    with torch.no_grad():
        torch.manual_seed(7)
        terms = ours.loss(x)
        torch.manual_seed(7)  # the same reparameterization noise
        recon, mu, logvar = theirs(x)
        per_image = examples_loss(recon, x, mu, logvar).item() / len(x)
    assert per_image == pytest.approx(-terms["elbo"].item(), rel=1e-5)
    assert per_image > 500  # an untrained model: far from the trained ~105


def test_the_reference_loop_never_flushes_subnormals():
    flush_denormal(True)
    try:
        with denormals_kept():
            assert not flush_denormal_enabled()
        assert flush_denormal_enabled()
    finally:
        flush_denormal(False)


def test_flags_default_to_what_fit_does_and_refuse_bad_values(capsys):
    args = parse_args([])
    assert (args.flush_denormal, args.seed, args.epochs, args.compile) == (True, 0, 3, False)
    assert parse_args(["--no-flush-denormal", "--seed", "2"]).flush_denormal is False
    with pytest.raises(SystemExit) as exc:
        parse_args(["--seed", "-1"])
    assert exc.value.code == 2
    assert "--seed must be at least 0" in capsys.readouterr().err


def _result(share: float | None, ratio: float) -> dict:
    """A bench.perf result as `run` returns it, with one fp32 run of the given contention and ratio."""
    run = {
        "epochs_s": [1.0, 1.0, 1.0],
        "reference_epochs_s": [9.0] * 3,
        "floor_s": 1.0 / ratio,
        "peak_floor_s": 0.5,
        "floor_plus_adam_s": 1.0,
        "epoch_s": 1.0,
        "reference_epoch_s": 9.0,
        "speedup_vs_reference": 9.0,
        "ratio_to_floor": ratio,
        "ratio_to_peak_floor": 2.0,
        "max_others_cpu_share": share,
    }
    machine = {
        "cpu_vendor": "GenuineIntel",
        "cpu_model": "Intel(R) Xeon(R) Processor",
        "cpu_family_model": "6/167",
        "logical_cpus": 2,
        "cpu_flags": ["amx_bf16", "avx512_bf16"],
        "bf16_matmul": True,
        "torch": "2.x",
        "cpu_capability": "AVX512",
        "torch_threads": 2,
        "load_avg_1m": 0.1,
        "load_avg_1m_end": 0.1,
    }
    return {
        "machine": machine,
        "gemm_gflops": {"fp32": {"square": 100.0, "model": 90.0}},
        "matmul_gflop_per_epoch": 90.0,
        "config": {"train_images": 60000, "warmup_epochs": 1},
        "adam_s_per_epoch": 0.1,
        "runs": {"fp32": run},
    }


def test_the_table_states_the_cpu_kind_and_never_calls_a_contended_run_met():
    from bench.perf.table import format_table

    idle = format_table(_result(0.01, 1.1))
    assert "GenuineIntel Intel(R) Xeon(R) Processor (family/model 6/167)" in idle
    assert "amx_bf16 avx512_bf16" in idle and "native bf16 matmul: yes" in idle
    assert "target <= 1.3: met" in idle and "target >= 8.0: met" in idle
    busy = format_table(_result(0.30, 1.1))  # others held 30 % of the CPUs during a timed epoch
    assert ": met" not in busy
    assert busy.count("NOT JUDGED (contended run") == 2 and "WARNING: contended" in busy
    unknown = format_table(_result(None, 1.1))  # no /proc/stat: cannot tell, so not judged either
    assert ": met" not in unknown
    assert "target <= 1.3: MISSED" in format_table(_result(0.30, 1.5))  # a miss is a miss, contended or not


def _two_precisions() -> dict:
    """fp32 on an idle machine, bf16 contended, both with --quality, and the reference loop's quality."""
    result = _result(0.01, 1.2)
    result["machine"].update(cpu_flags=[], bf16_matmul=False, load_avg_1m_end=1.25)
    result.update(
        gemm_gflops={"fp32": {"square": 100.0, "model": 90.04}, "bf16": {"square": 300.55, "model": 120.0}},
        matmul_gflop_per_epoch=196.8,
        adam_s_per_epoch=0.1234,
        reference_quality={"seed": 0, "epochs": 10, "test_loss": 105.41},
    )
    for p, share, s, loss in (("fp32", 0.01, 1.0, 104.321), ("bf16", 0.3, 0.6, 106.5)):  # s: seconds per epoch
        result["runs"][p] = {
            "epochs_s": [s, 1.1 * s, 0.9 * s],
            "reference_epochs_s": [9.0, 9.5, 8.75],
            "floor_s": 0.8 * s,
            "peak_floor_s": 0.5 * s,
            "floor_plus_adam_s": 0.95 * s,
            "epoch_s": s,
            "reference_epoch_s": 9.0,
            "speedup_vs_reference": 9.0 / s,
            "ratio_to_floor": 1.2 * s,
            "ratio_to_peak_floor": 2.0 * s,
            "ratio_to_fp32_floor": 0.85 * s,
            "max_others_cpu_share": share,
            "quality": {"epochs": 10, "test_loss": loss},
        }
    return result


# what the one-module bench/perf.py printed for _two_precisions(), before the table became rows declared as data
TWO_PRECISIONS_TABLE = """\
machine: GenuineIntel Intel(R) Xeon(R) Processor (family/model 6/167), 2 logical CPUs, flags (none of note), native bf16 matmul: no
torch 2.x (AVX512), 2 threads; load average 0.1 at start, 1.25 at end

matmul rate, GFLOP/s (best of 5 rounds)           fp32      bf16
  2048^3 square GEMM (peak)                      100.0     300.6
  the step's own GEMMs (the floor uses this)      90.0     120.0
matmul work per epoch: 196.8 GFLOP (forward + backward, 60000 images)

fp32  (seconds per epoch, median of 3 after 1 warm-up)
  floor at the step's GEMM rate         0.800
  floor at the square-GEMM peak         0.500
  floor + fit's Adam steps              0.950   (Adam alone 0.123: not a matmul, not in the floor)
  vae.train.fit                         1.000   all: 1.000 1.100 0.900
  pytorch/examples way (reference)      9.000   all: 9.000 9.500 8.750
  speedup vs reference    9.00x   target >= 8.0: met
  ratio to floor          1.20    target <= 1.3: met   (to the peak floor: 2.00)
  other processes used up to 1% of the CPUs during a timed epoch
  test loss after 10 epochs   104.32   target <= 105.0: met   (pytorch/examples: 105.55)

bf16  (seconds per epoch, median of 3 after 1 warm-up)
  floor at the step's GEMM rate         0.480
  floor at the square-GEMM peak         0.300
  floor + fit's Adam steps              0.570   (Adam alone 0.123: not a matmul, not in the floor)
  vae.train.fit                         0.600   all: 0.600 0.660 0.540
  pytorch/examples way (reference)      9.000   all: 9.000 9.500 8.750
  speedup vs reference   15.00x   target >= 8.0: NOT JUDGED (contended run: rerun on an idle machine)
  ratio to fp32 floor     0.51    target < 1: NOT JUDGED (contended run: rerun on an idle machine)   (to its own bf16 floor: 0.72)
  other processes used up to 30% of the CPUs during a timed epoch   WARNING: contended, these times are not the machine's
  test loss after 10 epochs   106.50   target <= 105.0: MISSED   (pytorch/examples: 105.55)

pytorch/examples loop, same seed (0): test loss after 10 epochs 105.41   target <= 105.0: MISSED"""  # noqa: E501


def test_the_table_of_both_precisions_reads_as_before_line_for_line():
    from bench.perf.table import format_table

    assert format_table(_two_precisions()).splitlines() == TWO_PRECISIONS_TABLE.splitlines()


def test_the_table_shows_the_fused_and_the_autograd_step_side_by_side():
    from bench.perf.measure import summarize_run
    from bench.perf.table import format_table

    rates = {"fp32": {"square": 100.0, "model": 90.0}}
    flops = 90e9  # 1.0 s at the model rate
    fused, autograd, ref = [(1.1, 0.0), (1.2, 0.0), (1.3, 0.0)], [(1.5, 0.0), (1.5, 0.0), (1.8, 0.0)], [(9.0, 0.0)] * 3
    run = summarize_run("fp32", fused, ref, flops, rates, autograd)
    assert run["autograd_epoch_s"] == 1.5 and run["autograd_ratio_to_floor"] == pytest.approx(1.5)
    mean, half, n = run["ratio_to_floor_interval"]
    assert (mean, n) == (pytest.approx(1.2), 3) and half == pytest.approx(4.303 * 0.1 / 3**0.5, rel=1e-3)
    assert run["fused_speedup_interval"][0] == pytest.approx((1.5 / 1.1 + 1.5 / 1.2 + 1.8 / 1.3) / 3)
    result = _result(0.01, 1.2)
    result["runs"]["fp32"] = {**result["runs"]["fp32"], **run, "floor_plus_adam_s": 1.1}
    lines = format_table(result).splitlines()
    assert "  fit, autograd step (step=autograd)    1.500   all: 1.500 1.500 1.800" in lines
    assert any(line.startswith("  ratio to floor, fused step            1.200 +- 0.248") for line in lines)
    assert any(line.startswith("  ratio to floor, autograd step         1.600 +- ") for line in lines)
    assert not any("autograd" in line for line in format_table(_result(0.01, 1.2)).splitlines())  # not timed: no rows
