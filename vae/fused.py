"""A hand-derived training step for vae.model's VAE and Autoencoder: forward, loss, every gradient and Adam,
no autograd.

`FusedStep(model, batch_size, lr)` makes the model's parameters views into one flat buffer and allocates every
activation and gradient buffer once; `step(x, generator)` trains on one batch. `fit` uses it (TrainConfig.step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from vae.model import ACTIVATIONS, VAE, Autoencoder

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as vae.train.make_optimizer uses them
ADAM_EPS = 1e-8

# Each activation as (forward, backward) over preallocated buffers, the same ATen kernels autograd runs.
# forward(a, h): a (B, width) holds the pre-activation; the result goes to h, which is `a` itself (in place)
# unless the backward needs the pre-activation (GELU). backward(g, a, h): g holds dLoss/dh and becomes
# dLoss/da in place.
ActFn = Callable[[torch.Tensor, torch.Tensor], object]
ActBwd = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]


@dataclass(frozen=True)
class Activation:
    forward: ActFn
    backward: ActBwd
    keeps_input: bool  # the backward reads the pre-activation, so the output needs a buffer of its own


_aten = torch.ops.aten
ACTIVATION_STEPS: dict[str, Activation] = {
    # ReLU's and tanh's derivatives read their output; ELU's too (is_result=True: alpha * exp(a) = h + alpha)
    "relu": Activation(
        lambda a, h: torch.relu_(a), lambda g, a, h: _aten.threshold_backward.grad_input(g, h, 0.0, grad_input=g), False
    ),
    "tanh": Activation(
        lambda a, h: torch.tanh_(a), lambda g, a, h: _aten.tanh_backward.grad_input(g, h, grad_input=g), False
    ),
    "elu": Activation(
        lambda a, h: torch._C._nn.elu_(a),
        lambda g, a, h: _aten.elu_backward.grad_input(g, 1.0, 1, 1, True, h, grad_input=g),
        False,
    ),
    "gelu": Activation(
        lambda a, h: torch._C._nn.gelu(a, out=h),
        lambda g, a, h: _aten.gelu_backward.grad_input(g, a, grad_input=g),
        True,
    ),
}
assert set(ACTIVATION_STEPS) == set(ACTIVATIONS), "every activation the models allow needs a fused step"


def supports(model: nn.Module) -> bool:
    """Whether FusedStep can train `model`: a VAE or Autoencoder of vae.model (exactly those classes, so a
    subclass with another loss is refused) with its parameters on a CPU, all trainable, all fp32 (or all fp64:
    the tests check the derivation there, where rounding cannot hide a mistake)."""
    if type(model) not in (VAE, Autoencoder) or not hasattr(torch, "_fused_adam_"):
        return False
    dtypes = {p.dtype for p in model.parameters()}
    return (
        len(dtypes) == 1
        and dtypes <= {torch.float32, torch.float64}
        and all(p.device.type == "cpu" and p.requires_grad for p in model.parameters())
    )


class _Linear:
    """One nn.Linear of a stack: its weights and gradients (views into the flat buffers) and its output buffers."""

    def __init__(
        self, linear: nn.Linear, grad_w: torch.Tensor, grad_b: torch.Tensor, act: str | None, batch: int
    ) -> None:
        self.w, self.b = linear.weight.detach(), linear.bias.detach()  # (out, in), (out,)
        self.wt = self.w.t()  # (in, out): nn.Linear's layout for the forward product
        self.gw, self.gb = grad_w, grad_b
        self.act = ACTIVATION_STEPS[act] if act is not None else None
        out, dtype = self.w.shape[0], self.w.dtype
        self.a = torch.empty(
            batch, out, dtype=dtype
        )  # pre-activation (B, out); the activation's output too unless keeps_input
        self.h = torch.empty(batch, out, dtype=dtype) if self.act is not None and self.act.keeps_input else self.a
        self.g = torch.empty(
            batch, out, dtype=dtype
        )  # dLoss/dh, then dLoss/da in place (unused for a stack's last layer)


class _Rows(NamedTuple):
    """The first b rows of each layer's buffers (contiguous views), made once per batch size, not per step."""

    a: list[torch.Tensor]
    h: list[torch.Tensor]
    g: list[torch.Tensor]
    ones: torch.Tensor  # (b,): the bias gradient is g^T @ ones, a GEMV that takes the 1 / b as its alpha


class _Stack:
    """An mlp() of vae.model (Linear, act, ..., Linear) run forward and backward over fixed buffers."""

    def __init__(self, seq: nn.Sequential, views: dict[int, tuple[torch.Tensor, torch.Tensor]], batch: int) -> None:
        mods = list(seq)
        self.layers: list[_Linear] = []
        for i, m in enumerate(mods):
            if isinstance(m, nn.Linear):
                nxt = mods[i + 1] if i + 1 < len(mods) else None
                act = next((k for k, cls in ACTIVATIONS.items() if type(nxt) is cls), None) if nxt is not None else None
                gw, gb = views[id(m.weight)][1], views[id(m.bias)][1]
                self.layers.append(_Linear(m, gw, gb, act, batch))
        self._rows: dict[int, _Rows] = {}

    @property
    def out(self) -> torch.Tensor:
        return self.layers[-1].a  # (B, out): the stack's output (no activation after the last Linear)

    def rows(self, b: int) -> _Rows:
        if b not in self._rows:
            ls = self.layers
            self._rows[b] = _Rows(
                [x.a[:b] for x in ls], [x.h[:b] for x in ls], [x.g[:b] for x in ls], torch.ones(b, dtype=ls[0].w.dtype)
            )
        return self._rows[b]

    def forward(self, x: torch.Tensor, r: _Rows) -> None:
        """x (b, in) -> r.a[-1], (b, out)."""
        h = x
        for layer, a, h_out in zip(self.layers, r.a, r.h, strict=False):
            torch.addmm(layer.b, h, layer.wt, out=a)  # a = h W^T + bias, as nn.Linear
            if layer.act is not None:
                layer.act.forward(a, h_out)
            h = h_out

    def backward(self, x: torch.Tensor, g_out: torch.Tensor, r: _Rows, scale: float, g_in: torch.Tensor | None) -> None:
        """Weight and bias gradients from g_out = dLoss/d(out) / scale (b, out), and dLoss/dx into g_in (b, in).

        `scale` turns g_out into the true gradient inside the GEMMs (their alpha), so the caller need not
        scale a whole (b, out) buffer first; the gradients below come out of those GEMMs already scaled.
        """
        g = g_out
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            h_in = r.h[i - 1] if i > 0 else x
            torch.addmm(layer.gw, g.t(), h_in, beta=0, alpha=scale, out=layer.gw)  # (out, in) = g^T h_in
            torch.addmv(layer.gb, g.t(), r.ones, beta=0, alpha=scale, out=layer.gb)  # (out,) = g^T 1
            if i == 0:  # the images need no gradient: the first layer skips this product, as autograd does
                if g_in is not None:
                    torch.addmm(g_in, g, layer.w, beta=0, alpha=scale, out=g_in)  # (b, in) = g W
                break
            below = self.layers[i - 1]
            target = r.g[i - 1]
            torch.addmm(target, g, layer.w, beta=0, alpha=scale, out=target)  # dLoss/dh below, (b, in) = g W
            below.act.backward(target, r.a[i - 1], r.h[i - 1])  # dLoss/dh -> dLoss/da, in place
            g, scale = target, 1.0


class _Latent(NamedTuple):
    """The first b rows of the latent and loss buffers, and the constants of batch size b, made once per size."""

    eps: torch.Tensor  # (b, L) reparameterization noise
    std: torch.Tensor  # (b, L) exp(logvar / 2)
    z: torch.Tensor  # (b, L)
    k: torch.Tensor  # (b, L) 2 * KL per element, then scratch
    dz: torch.Tensor  # (b, L)
    d_mu: torch.Tensor  # (b, L) view of d_head
    d_logvar: torch.Tensor  # (b, L) view of d_head
    d_head: torch.Tensor  # (b, 2L)
    t: torch.Tensor  # (b, 784) the BCE's scratch
    kl_scale: torch.Tensor  # 0-d: beta / (2 b), a tensor so no Python number is wrapped per step


class FusedStep:
    """Adam training of a VAE or Autoencoder (supports(model)) with a hand-derived backward pass.

    The loss is vae.loss's: recon BCE-with-logits summed over pixels, plus beta * KL for a VAE, averaged
    over the batch. Gradients, for a batch of b images, with sigma the logistic function:
      dLoss/dlogits = (sigma(logits) - x) / b
      z = mu + std * eps, std = exp(logvar / 2):
      dLoss/dmu = dLoss/dz + beta * mu / b
      dLoss/dlogvar = dLoss/dz * eps * std / 2 + beta * (std^2 - 1) / (2 b)
    and through each Linear y = h W^T + bias: dW = g^T h, dbias = sum_rows g, dh = g W.
    While this object lives, the model's parameters are views into one flat buffer that one fused Adam
    kernel steps; `release()` gives them storage of their own again.
    """

    def __init__(self, model: nn.Module, batch_size: int, lr: float) -> None:
        if not supports(model):
            raise ValueError("the fused step trains only vae.model's VAE and Autoencoder, on a CPU, in fp32 or fp64")
        self.model = model
        self.is_vae = isinstance(model, VAE)
        self.beta = float(model.config.beta)
        self.latent = model.config.latent_dim
        self.batch = batch_size
        self.lr = float(lr)
        params = list(model.parameters())
        dtype = params[0].dtype
        total = sum(p.numel() for p in params)
        self.flat = torch.empty(total, dtype=dtype)  # every parameter, in model.parameters() order
        self.flat_grad = torch.zeros(total, dtype=dtype)
        self.exp_avg = torch.zeros(total, dtype=dtype)
        self.exp_avg_sq = torch.zeros(total, dtype=dtype)
        self.step_count = torch.zeros(())  # Adam's bias-correction count, as torch.optim keeps it (a float tensor)
        views: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        offset = 0
        with torch.no_grad():
            for p in params:
                n = p.numel()
                pv, gv = self.flat[offset : offset + n].view_as(p), self.flat_grad[offset : offset + n].view_as(p)
                pv.copy_(p)
                p.data = pv  # the module's parameter now lives in the flat buffer
                views[id(p)] = (pv, gv)
                offset += n
        self.encoder = _Stack(model.encoder, views, batch_size)
        self.decoder = _Stack(model.decoder, views, batch_size)
        L, B, D = self.latent, batch_size, self.decoder.out.shape[1]
        self.z = torch.empty(B, L, dtype=dtype)  # the decoder's input: sampled z (a VAE; unused by an autoencoder)
        self.eps = torch.empty(B, L, dtype=dtype)  # reparameterization noise
        self.std = torch.empty(B, L, dtype=dtype)  # exp(logvar / 2)
        self.kl_buf = torch.empty(B, L, dtype=dtype)  # 2 * KL per element, then scratch of the KL gradient
        self.dz = torch.empty(B, L, dtype=dtype)  # dLoss/dz
        self.d_head = torch.empty(B, 2 * L, dtype=dtype)  # dLoss/d(mu, logvar) (a VAE)
        self.scratch = torch.empty(B, D, dtype=dtype)  # the BCE's elementwise terms, (B, 784)
        self.x = torch.empty(B, self.encoder.layers[0].w.shape[1], dtype=dtype)  # a batch, for the caller to fill
        # per step: BCE summed over the batch's images and pixels, 2 * KL summed likewise (0 for an autoencoder),
        # then two scratch sums of the BCE
        self.terms = torch.zeros(4, dtype=dtype)
        self._t = [self.terms[i] for i in range(4)]  # 0-d views, written by reductions with out=
        # numbers as 0-d tensors of the buffers' dtype: a Python number would be wrapped and cast every step
        self._one, self._half = torch.ones((), dtype=dtype), torch.full((), 0.5, dtype=dtype)
        self._step_one = torch.ones(())
        self._latent_rows: dict[int, _Latent] = {}

    def _latent(self, b: int) -> _Latent:
        if b not in self._latent_rows:
            L = self.latent
            self._latent_rows[b] = _Latent(
                self.eps[:b],
                self.std[:b],
                self.z[:b],
                self.kl_buf[:b],
                self.dz[:b],
                self.d_head[:b, :L],
                self.d_head[:b, L:],
                self.d_head[:b],
                self.scratch[:b],
                torch.full((), self.beta / (2 * b), dtype=self.x.dtype),
            )
        return self._latent_rows[b]

    @torch.no_grad()
    def step(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """One Adam step on the batch x (b, 784), b <= batch_size; z noise drawn from `generator` as VAE.loss draws it.

        Afterwards terms[0] holds the batch's BCE and terms[1] twice its KL (nats, summed over its images).
        """
        b = x.shape[0]
        enc, dec = self.encoder, self.decoder
        er, dr, v = enc.rows(b), dec.rows(b), self._latent(b)
        enc.forward(x, er)
        head = er.a[-1]  # (b, 2L) for a VAE: mean and log-variance; (b, L) for an autoencoder: the code
        if self.is_vae:
            L = self.latent
            mu, logvar = head[:, :L], head[:, L:]  # (b, L) each, strided views
            torch.randn(v.eps.shape, generator=generator, out=v.eps)  # the same draw as VAE.reparameterize's randn
            torch.mul(logvar, self._half, out=v.std).exp_()
            torch.addcmul(mu, v.std, v.eps, out=v.z)  # z = mu + std * eps
            z = v.z
        else:
            z = head
        dec.forward(z, dr)
        logits = dr.a[-1]  # (b, 784)
        self._bce(logits, x, v.t)  # logits now hold sigma(logits) - x = b * dLoss/dlogits
        dec.backward(z, logits, dr, 1.0 / b, v.dz)
        if not self.is_vae:
            enc.backward(x, v.dz, er, 1.0, None)
        else:
            k = v.k
            torch.mul(v.std, v.std, out=k)  # 2 KL per element = std^2 - 1 - logvar + mu^2
            k.sub_(logvar).sub_(self._one).addcmul_(mu, mu)
            torch.sum(k, (0, 1), out=self._t[1])
            torch.add(v.dz, mu, alpha=self.beta / b, out=v.d_mu)  # dz + beta * mu / b
            torch.mul(v.std, v.std, out=v.d_logvar)
            v.d_logvar.sub_(self._one).mul_(v.kl_scale)  # beta * (std^2 - 1) / (2 b)
            torch.mul(v.dz, v.eps, out=k)
            v.d_logvar.addcmul_(k, v.std, value=0.5)  # + dz * eps * std / 2
            enc.backward(x, v.d_head, er, 1.0, None)
        self.step_count.add_(self._step_one)
        torch._fused_adam_(
            [self.flat],
            [self.flat_grad],
            [self.exp_avg],
            [self.exp_avg_sq],
            [],
            [self.step_count],
            amsgrad=False,
            lr=self.lr,
            beta1=ADAM_BETAS[0],
            beta2=ADAM_BETAS[1],
            weight_decay=0.0,
            eps=ADAM_EPS,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    def _bce(self, logits: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> None:
        """terms[0] = sum of BCE-with-logits over the batch; logits becomes sigma(logits) - x, in place. t: scratch.

        BCE = max(l, 0) - x l + log(1 + exp(-|l|)), summed as (sum l + sum |l|) / 2 - x . l + sum log(1 + e):
        log(1 + e) rather than log1p, which is not vectorized on a CPU (vae.loss._BernoulliNLL says more).
        Eleven passes over (b, 784); torch.compile of this piece into one kernel was measured and not kept
        (BENCHMARKS.md, issue 23).
        """
        s_bce, s_abs, s_xl = self._t[0], self._t[2], self._t[3]
        torch.abs(logits, out=t)
        torch.sum(t, (0, 1), out=s_abs)
        t.neg_().exp_().add_(self._one).log_()
        torch.sum(t, (0, 1), out=s_bce)
        s_bce.add_(s_abs, alpha=0.5)
        torch.sum(logits, (0, 1), out=s_abs)
        s_bce.add_(s_abs, alpha=0.5)
        torch.dot(x.reshape(-1), logits.view(-1), out=s_xl)
        s_bce.sub_(s_xl)
        torch.sigmoid(logits, out=logits)
        logits.sub_(x)

    def release(self) -> None:
        """Give each parameter storage of its own again (a copy of its final value); the flat buffer is dropped."""
        with torch.no_grad():
            for p in self.model.parameters():
                p.data = p.data.clone()
                p.grad = None


def grads_of(fs: FusedStep) -> list[torch.Tensor]:
    """Copies of the last step's gradients, one per parameter in model.parameters() order (for the tests)."""
    out, offset = [], 0
    for p in fs.model.parameters():
        out.append(fs.flat_grad[offset : offset + p.numel()].view_as(p).clone())
        offset += p.numel()
    return out
