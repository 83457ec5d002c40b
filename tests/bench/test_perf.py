"""bench.perf's arithmetic and its reference: the floor's FLOP count, and that the
pytorch/examples model scores the same loss as this project's VAE. Values, not timings."""

from __future__ import annotations

import pytest
import torch

from bench.perf import REFERENCE_MODEL, ExamplesVAE, denormals_kept, epoch_matmul_flops, examples_loss, parse_args
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
    run = {"epochs_s": [1.0, 1.0, 1.0], "reference_epochs_s": [9.0] * 3, "floor_s": 1.0 / ratio, "peak_floor_s": 0.5,
           "floor_plus_adam_s": 1.0, "epoch_s": 1.0, "reference_epoch_s": 9.0, "speedup_vs_reference": 9.0,
           "ratio_to_floor": ratio, "ratio_to_peak_floor": 2.0, "max_others_cpu_share": share}
    machine = {"cpu_vendor": "GenuineIntel", "cpu_model": "Intel(R) Xeon(R) Processor", "cpu_family_model": "6/167",
               "logical_cpus": 2, "cpu_flags": ["amx_bf16", "avx512_bf16"], "bf16_matmul": True, "torch": "2.x",
               "cpu_capability": "AVX512", "torch_threads": 2, "load_avg_1m": 0.1, "load_avg_1m_end": 0.1}
    return {"machine": machine, "gemm_gflops": {"fp32": {"square": 100.0, "model": 90.0}}, "matmul_gflop_per_epoch": 90.0,
            "config": {"train_images": 60000, "warmup_epochs": 1}, "adam_s_per_epoch": 0.1, "runs": {"fp32": run}}


def test_the_table_states_the_cpu_kind_and_never_calls_a_contended_run_met():
    from bench.perf import format_table

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
