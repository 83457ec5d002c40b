"""The literature's test NLL: the study's best VAE scored with IWAE k = 5000 on the full test set (Burda et al. 2015).

`score_paper_protocol(ctx)` (a bench.context.StudyContext) logs test/nll_iw_k5000 and its standard
error on the best trial's run when the study sets `[eval] paper_protocol = true`; done once per run.
"""

from __future__ import annotations

import tempfile
import time

import torch
from torch import nn

from bench import tags as T
from bench.context import StudyContext
from vae.evaluate import iwae_nll_per_image, mean_and_se
from vae.train import load_checkpoint

PAPER_IW_SAMPLES = 5000  # k of Burda et al. 2015's reported test NLL (ANCHORS.md)
PAPER_KEYS = ("test/nll_iw_k5000", "test/nll_iw_k5000_se")  # declared in bench.metrics
PAPER_SECONDS_TAG = "paper_protocol_s"  # wall seconds the k = 5000 evaluation took on that run's device
# (100 samples, 100 images, 784) logits at a time, 31 MB in float32: 1.9-2.1x faster on a CPU than 500 samples
# a chunk (160 MB, out of cache), measured on 100 images, k = 1000, 1 thread (notes/replicates.md)
BATCH_IMAGES, CHUNK_SAMPLES = 100, 100


def paper_nll(model: nn.Module, x: torch.Tensor, seed: int = 0, k: int = PAPER_IW_SAMPLES) -> dict[str, float]:
    """IWAE NLL with k samples on every image of x (nats per image) and its standard error across images."""
    per_image = iwae_nll_per_image(model, x, k=k, batch_size=BATCH_IMAGES, chunk=CHUNK_SAMPLES, seed=seed)
    nll, se = mean_and_se(per_image)
    return {PAPER_KEYS[0]: nll, PAPER_KEYS[1]: se}


def score_paper_protocol(ctx: StudyContext, k: int = PAPER_IW_SAMPLES) -> dict[str, float] | None:
    """Score the study's best VAE with the paper's protocol on all of ctx.data.test unless its run already
    has the metric; returns what was logged (None when nothing was). `k` other than 5000 is for tests."""
    tracker = ctx.tracker
    best = ctx.bests.trial
    if best is None or T.RUN_ID_ATTR not in best.user_attrs:
        return None
    run_id = best.user_attrs[T.RUN_ID_ATTR]
    if PAPER_KEYS[0] in tracker.metrics_of(run_id):
        return None
    with tempfile.TemporaryDirectory(prefix="vaebench-") as tmp:
        model, train_cfg = load_checkpoint(tracker.download(run_id, "checkpoint/model.pt", tmp), ctx.device)
    t0 = time.perf_counter()
    scores = paper_nll(model, ctx.data.test.x, seed=train_cfg.seed, k=k)
    tracker.log_metrics(run_id, scores)
    tracker.set_tags(run_id, {PAPER_SECONDS_TAG: f"{time.perf_counter() - t0:.0f}"})
    return scores
