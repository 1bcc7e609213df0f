"""Models written the way people write them, as test data with readable ids.

Each :class:`ModelCase` builds ``(f, x, batched)`` in a requested dtype: the custom ``forward``
methods, ``ModuleList`` loops, in-place activations, subclasses of ``nn.Linear`` / ``nn.Conv2d``,
parametrisations, losses with fixed labels, attention, recurrent nets … that hessviz users hand to
it, not only the ``nn.Sequential`` MLPs hessviz builds itself. Every case is small (≤ 12 inputs per
sample, small images for the convolutions, batch ≤ 4) so its float64 reference is cheap.

Parameters and inputs are drawn once in float32 from fixed seeds (never from the global RNG state)
and then converted: ``build(torch.float64)`` and ``build(torch.float32)`` are the same function at
the same point, evaluated in two precisions.

:func:`reference` is the one trusted answer: the full Hessian of ``f`` at the whole input by
``torch.func.hessian`` (forward-over-reverse) in float64 — or double backward where ``torch.func``
cannot run the model — from which the per-sample blocks are read when ``batched``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parametrizations

F32 = torch.float32


def wrap_first(f, x):
    """One sample, unbatched, for a model that needs its batch dimension: ``f(s[None])[0]``."""
    return (lambda s: f(s[None])[0]), x[0]


def direct_first(f, x):
    """One sample, unbatched, for a model that also accepts unbatched input: ``f(x[0])``."""
    return f, x[0]


@dataclass(frozen=True)
class ModelCase:
    """One model as a user writes it.

    Attributes:
        id: readable id, used as the pytest id.
        build: ``dtype -> (f, x, batched)``; ``f`` a module or a callable, ``x`` in ``dtype``.
        family: the pattern the case belongs to (``"inplace"``, ``"subclass"``, ``"loss"`` …).
        notes: what the case exercises.
        one_sample: for a batched case, ``(f, x) -> (f1, x1)``: how a user runs the first sample
            alone, unbatched; its Hessian is the first block of the batched reference.
    """

    id: str
    build: Callable[[torch.dtype], tuple]
    family: str
    notes: str = ""
    one_sample: Callable = wrap_first


CATALOGUE: list[ModelCase] = []


def case(id: str, family: str, notes: str = "", one_sample: Callable = wrap_first):
    """Register the decorated ``build(dtype)`` as a :class:`ModelCase`."""

    def register(build):
        CATALOGUE.append(ModelCase(id, build, family, notes, one_sample))
        return build

    return register


# -- fixed-seed helpers ----------------------------------------------------------------------------


def seeded(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    """``make()`` with the global RNG seeded to ``seed``, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def randn(*shape, seed: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=F32)).to(dtype)


def uniform(*shape, seed: int, dtype: torch.dtype, low=-1.0, high=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(shape, generator=g, dtype=F32)).to(dtype)


def gain(model: nn.Module, factor: float) -> nn.Module:
    """Scale the weights of every Linear / convolution by ``factor``, as training grows them from
    their small default initialisation (keeps second derivatives well away from zero)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                m.weight.mul_(factor)
    return model


def trained_norms(model: nn.Module) -> nn.Module:
    """Give every norm layer non-default affine parameters and running statistics, as after
    training (called inside :func:`seeded`)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.BatchNorm2d)):
                if getattr(m, "weight", None) is not None:
                    m.weight.uniform_(0.5, 1.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.uniform_(-0.3, 0.3)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


# -- custom forward methods ------------------------------------------------------------------------


class TanhMLP(nn.Module):
    def __init__(self, n_in=3, width=8, n_out=2):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, n_out)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class FunctionalSiLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        x = F.silu(self.fc1(x))
        x = F.silu(self.fc2(x))
        return self.fc3(x)


class LoopMLP(nn.Module):
    """Layers in a ``ModuleList``, the activation applied in a Python loop."""

    def __init__(self, sizes, activation):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.activation = activation

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


class SquareFeatureNet(nn.Module):
    def __init__(self, n_in=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * n_in, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(torch.cat([x, x.pow(2)], dim=-1))


@case(
    "custom-forward-mlp-tanh", "custom-forward", "self.fc2(torch.tanh(self.fc1(x)))", direct_first
)
def _(dtype):
    return seeded(0, TanhMLP).to(dtype), randn(4, 3, seed=1, dtype=dtype), True


@case("custom-forward-mlp-unbatched", "custom-forward", "the same module on one (4,) input")
def _(dtype):
    return seeded(1, lambda: TanhMLP(4, 6, 3)).to(dtype), randn(4, seed=2, dtype=dtype), False


@case("custom-forward-functional-silu", "custom-forward", "F.silu between three Linear layers")
def _(dtype):
    return seeded(2, FunctionalSiLUNet).to(dtype), randn(4, 3, seed=3, dtype=dtype), True


@case(
    "modulelist-loop-softplus", "custom-forward", "ModuleList + for loop, F.softplus", direct_first
)
def _(dtype):
    net = seeded(3, lambda: LoopMLP([3, 6, 6, 2], F.softplus)).to(dtype)
    return net, randn(4, 3, seed=4, dtype=dtype), True


@case(
    "custom-forward-square-features", "custom-forward", "cat([x, x**2]) into an MLP", direct_first
)
def _(dtype):
    return seeded(4, SquareFeatureNet).to(dtype), randn(3, 3, seed=5, dtype=dtype), True


# -- DeepXDE-style FNN -----------------------------------------------------------------------------


class FNN(nn.Module):
    """A fully connected net as physics-informed codes write it: a ``ModuleList`` of Linear layers
    with Glorot-normal weights and zero biases, optional input and output transforms (the output
    transform imposes boundary/initial conditions exactly)."""

    def __init__(self, sizes, activation, input_transform=None, output_transform=None):
        super().__init__()
        self.activation = activation
        self.input_transform = input_transform
        self.output_transform = output_transform
        self.linears = nn.ModuleList()
        for a, b in zip(sizes, sizes[1:]):
            layer = nn.Linear(a, b)
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
            self.linears.append(layer)

    def forward(self, inputs):
        x = inputs
        if self.input_transform is not None:
            x = self.input_transform(x)
        for linear in self.linears[:-1]:
            x = self.activation(linear(x))
        x = self.linears[-1](x)
        if self.output_transform is not None:
            x = self.output_transform(inputs, x)
        return x


@case("deepxde-fnn-tanh", "deepxde", "FNN [2, 8, 8, 1], tanh, Glorot normal")
def _(dtype):
    net = seeded(5, lambda: FNN([2, 8, 8, 1], torch.tanh)).to(dtype)
    return net, uniform(4, 2, seed=6, dtype=dtype, low=0.0, high=1.0), True


@case("deepxde-fnn-hard-bc", "deepxde", "hard boundary condition x(1-x)·net(x) on [0, 1]")
def _(dtype):
    def hard_bc(x, y):
        return x[:, :1] * (1 - x[:, :1]) * y

    net = seeded(6, lambda: FNN([2, 8, 8, 1], torch.tanh, output_transform=hard_bc)).to(dtype)
    return net, uniform(4, 2, seed=7, dtype=dtype, low=0.0, high=1.0), True


@case("deepxde-fnn-hard-ic", "deepxde", "initial condition t·net(x, t) + sin(πx), sin activation")
def _(dtype):
    def hard_ic(x, y):
        return x[:, 1:2] * y + torch.sin(math.pi * x[:, 0:1])

    net = seeded(7, lambda: FNN([2, 8, 8, 1], torch.sin, output_transform=hard_ic)).to(dtype)
    return net, uniform(4, 2, seed=8, dtype=dtype, low=0.0, high=1.0), True


@case("deepxde-fnn-periodic-input", "deepxde", "periodic input transform (cos 2πx, sin 2πx, t)")
def _(dtype):
    def periodic(x):
        return torch.cat(
            [torch.cos(2 * math.pi * x[:, :1]), torch.sin(2 * math.pi * x[:, :1]), x[:, 1:]], dim=1
        )

    net = seeded(8, lambda: FNN([3, 8, 8, 1], torch.tanh, input_transform=periodic)).to(dtype)
    return net, uniform(4, 2, seed=9, dtype=dtype, low=0.0, high=1.0), True


# -- residual MLPs ---------------------------------------------------------------------------------


class ResidualTanhMLP(nn.Module):
    def __init__(self, n_in=3, width=6, n_out=2, depth=2):
        super().__init__()
        self.lin_in = nn.Linear(n_in, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, n_out)

    def forward(self, x):
        h = self.lin_in(x)
        for block in self.blocks:
            h = h + torch.tanh(block(h))
        return self.out(h)


class Residual(nn.Module):
    def __init__(self, *layers):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.body(x)


class PreLNBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, x):
        return x + self.mlp(self.norm(x))


@case("residual-mlp-tanh", "residual", "h = h + tanh(W h) blocks in a loop", direct_first)
def _(dtype):
    return seeded(9, ResidualTanhMLP).to(dtype), randn(4, 3, seed=10, dtype=dtype), True


@case(
    "residual-blocks-in-sequential",
    "residual",
    "nn.Sequential of x + body(x) modules",
    direct_first,
)
def _(dtype):
    net = seeded(
        10,
        lambda: nn.Sequential(
            nn.Linear(3, 6),
            Residual(nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 6)),
            Residual(nn.Linear(6, 6), nn.Softplus(), nn.Linear(6, 6)),
            nn.Linear(6, 2),
        ),
    )
    return net.to(dtype), randn(4, 3, seed=11, dtype=dtype), True


@case("residual-pre-layernorm", "norm", "pre-LN residual blocks x + mlp(ln(x))", direct_first)
def _(dtype):
    net = seeded(
        11,
        lambda: trained_norms(
            nn.Sequential(nn.Linear(3, 4), PreLNBlock(4), PreLNBlock(4), nn.Linear(4, 2))
        ),
    )
    return net.to(dtype), randn(3, 3, seed=12, dtype=dtype), True


# -- normalisation layers --------------------------------------------------------------------------


@case("layernorm-mlp", "norm", "Linear, LayerNorm, Tanh, Linear", direct_first)
def _(dtype):
    net = seeded(
        12,
        lambda: trained_norms(
            nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))
        ),
    )
    return net.to(dtype), randn(4, 3, seed=13, dtype=dtype), True


@case("layernorm-functional-cubed", "norm", "lambda v: F.layer_norm(v, (4,)).pow(3).sum()")
def _(dtype):
    return (lambda v: F.layer_norm(v, (4,)).pow(3).sum()), randn(4, seed=14, dtype=dtype), False


@case("layernorm-functional-cubed-batched", "norm", "the same, one sum per row", direct_first)
def _(dtype):
    f = lambda v: F.layer_norm(v, (4,)).pow(3).sum(-1)  # noqa: E731
    return f, randn(3, 4, seed=15, dtype=dtype), True


@case("groupnorm-mlp", "norm", "Linear, GroupNorm(2, 8), SiLU, Linear")
def _(dtype):
    net = seeded(
        13,
        lambda: trained_norms(
            nn.Sequential(nn.Linear(3, 8), nn.GroupNorm(2, 8), nn.SiLU(), nn.Linear(8, 2))
        ),
    )
    return net.to(dtype), randn(4, 3, seed=16, dtype=dtype), True


@case("rmsnorm-mlp", "norm", "Linear, nn.RMSNorm, GELU, Linear", direct_first)
def _(dtype):
    net = seeded(
        14,
        lambda: trained_norms(
            nn.Sequential(nn.Linear(3, 8), nn.RMSNorm(8), nn.GELU(), nn.Linear(8, 2))
        ),
    )
    return net.to(dtype), randn(4, 3, seed=17, dtype=dtype), True


# -- in-place activations --------------------------------------------------------------------------


class ReluUnderscoreNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 8), nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = F.relu_(self.fc1(x))
        h = torch.tanh(self.fc2(h))
        return self.fc3(h)


class TanhUnderscoreNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.fc1(x)
        h.tanh_()
        return self.fc2(h)


@case("silu-inplace-sequential", "inplace", "Linear, SiLU(inplace=True), Linear", direct_first)
def _(dtype):
    net = seeded(15, lambda: nn.Sequential(nn.Linear(3, 8), nn.SiLU(inplace=True), nn.Linear(8, 1)))
    return net.to(dtype), randn(4, 3, seed=18, dtype=dtype), True


@case(
    "relu-inplace-then-softplus", "inplace", "ReLU(inplace=True) then a smooth layer", direct_first
)
def _(dtype):
    net = gain(
        seeded(
            16,
            lambda: nn.Sequential(
                nn.Linear(3, 8),
                nn.ReLU(inplace=True),
                nn.Linear(8, 8),
                nn.Softplus(),
                nn.Linear(8, 2),
            ),
        ),
        3.0,
    )
    return net.to(dtype), randn(4, 3, seed=19, dtype=dtype), True


@case("elu-inplace-sequential", "inplace", "two ELU(inplace=True) layers", direct_first)
def _(dtype):
    net = seeded(
        17,
        lambda: nn.Sequential(
            nn.Linear(3, 6),
            nn.ELU(inplace=True),
            nn.Linear(6, 6),
            nn.ELU(inplace=True),
            nn.Linear(6, 2),
        ),
    )
    return net.to(dtype), randn(4, 3, seed=20, dtype=dtype), True


@case(
    "relu-underscore-in-forward", "inplace", "F.relu_ on an intermediate, then tanh", direct_first
)
def _(dtype):
    return seeded(18, ReluUnderscoreNet).to(dtype), randn(4, 3, seed=21, dtype=dtype), True


@case("tanh-underscore-in-forward", "inplace", "h = fc1(x); h.tanh_(); fc2(h)", direct_first)
def _(dtype):
    return seeded(19, TanhUnderscoreNet).to(dtype), randn(4, 3, seed=22, dtype=dtype), True


@case("leakyrelu-inplace-sigmoid", "inplace", "LeakyReLU(0.1, inplace=True), Sigmoid", direct_first)
def _(dtype):
    net = gain(
        seeded(
            20,
            lambda: nn.Sequential(
                nn.Linear(3, 6),
                nn.LeakyReLU(0.1, inplace=True),
                nn.Linear(6, 6),
                nn.Sigmoid(),
                nn.Linear(6, 2),
            ),
        ),
        4.0,
    )
    return net.to(dtype), randn(4, 3, seed=23, dtype=dtype), True


@case(
    "hardswish-inplace-sequential",
    "inplace",
    "Hardswish(inplace=True): σ'' = 1/3 inside",
    direct_first,
)
def _(dtype):
    net = seeded(
        21, lambda: nn.Sequential(nn.Linear(3, 8), nn.Hardswish(inplace=True), nn.Linear(8, 2))
    )
    return net.to(dtype), randn(4, 3, seed=24, dtype=dtype), True


# -- subclasses of Linear / Conv -------------------------------------------------------------------


class LoRALinear(nn.Linear):
    """A Linear layer with a low-rank adapter: ``W x + b + s·B A x``."""

    def __init__(self, n_in, n_out, rank=2, alpha=4.0):
        super().__init__(n_in, n_out)
        self.lora_A = nn.Parameter(0.5 * torch.randn(rank, n_in))
        self.lora_B = nn.Parameter(0.5 * torch.randn(n_out, rank))  # trained: no longer zero
        self.scaling = alpha / rank

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + self.scaling * (
            x @ self.lora_A.T @ self.lora_B.T
        )


class SquaredLinear(nn.Linear):
    """A Linear layer with non-negative weights ``W ⊙ W``."""

    def forward(self, x):
        return F.linear(x, self.weight**2, self.bias)


class ScaledInputLinear(nn.Linear):
    """Scales its input before the parent's forward."""

    def __init__(self, n_in, n_out, scale=2.0):
        super().__init__(n_in, n_out)
        self.register_buffer("input_scale", torch.tensor(scale))

    def forward(self, x):
        return super().forward(x * self.input_scale)


class NamedLinear(nn.Linear):
    """A subclass that only changes how it prints: the computation is nn.Linear's."""

    def extra_repr(self):
        return "named, " + super().extra_repr()


class WSConv2d(nn.Conv2d):
    """Weight-standardised convolution."""

    def forward(self, x):
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        std = w.std(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(
            x,
            (w - mean) / (std + 1e-5),
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )


class SameConv2d(nn.Conv2d):
    """ "Same" padding for even kernels: one more pixel on the right and bottom."""

    def forward(self, x):
        kh, kw = self.kernel_size
        x = F.pad(x, ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class CausalConv1d(nn.Conv1d):
    """Left padding only: output t sees inputs ≤ t."""

    def forward(self, x):
        x = F.pad(x, (self.dilation[0] * (self.kernel_size[0] - 1), 0))
        return self._conv_forward(x, self.weight, self.bias)


class PlainConv2d(nn.Conv2d):
    """A subclass that does not override ``forward``."""


@case("lora-linear-subclass", "subclass", "nn.Linear subclass: W x + b + s·B A x", direct_first)
def _(dtype):
    net = seeded(22, lambda: nn.Sequential(LoRALinear(3, 8), nn.Tanh(), LoRALinear(8, 2)))
    return net.to(dtype), randn(4, 3, seed=25, dtype=dtype), True


@case("squared-weight-linear-subclass", "subclass", "nn.Linear subclass using W**2", direct_first)
def _(dtype):
    net = gain(
        seeded(23, lambda: nn.Sequential(SquaredLinear(3, 6), nn.Softplus(), nn.Linear(6, 2))), 2.0
    )
    return net.to(dtype), randn(4, 3, seed=26, dtype=dtype), True


@case("scaled-input-linear-subclass", "subclass", "super().forward(x * scale)", direct_first)
def _(dtype):
    net = seeded(24, lambda: nn.Sequential(ScaledInputLinear(3, 6), nn.Tanh(), nn.Linear(6, 2)))
    return net.to(dtype), randn(4, 3, seed=27, dtype=dtype), True


@case(
    "linear-subclass-without-forward",
    "subclass",
    "subclass that keeps nn.Linear.forward",
    direct_first,
)
def _(dtype):
    net = seeded(25, lambda: nn.Sequential(NamedLinear(3, 6), nn.Tanh(), NamedLinear(6, 2)))
    return net.to(dtype), randn(4, 3, seed=28, dtype=dtype), True


@case("weight-standardised-conv-subclass", "subclass", "nn.Conv2d subclass standardising W")
def _(dtype):
    net = seeded(
        26,
        lambda: nn.Sequential(WSConv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)),
    )
    return net.to(dtype), randn(2, 1, 6, 6, seed=29, dtype=dtype), True


@case("same-padding-conv-subclass", "subclass", "nn.Conv2d subclass with asymmetric 'same' pad")
def _(dtype):
    net = seeded(
        27,
        lambda: nn.Sequential(
            SameConv2d(1, 2, 2), nn.Softplus(), nn.Flatten(), nn.Linear(2 * 6 * 6, 2)
        ),
    )
    return net.to(dtype), randn(2, 1, 6, 6, seed=30, dtype=dtype), True


@case("causal-conv1d-subclass", "subclass", "nn.Conv1d subclass padding on the left")
def _(dtype):
    net = seeded(
        28,
        lambda: nn.Sequential(CausalConv1d(2, 3, 3), nn.GELU(), nn.Flatten(), nn.Linear(3 * 5, 2)),
    )
    return net.to(dtype), randn(3, 2, 5, seed=31, dtype=dtype), True


@case("conv-subclass-without-forward", "subclass", "subclass that keeps nn.Conv2d.forward")
def _(dtype):
    net = gain(
        seeded(
            29,
            lambda: nn.Sequential(
                PlainConv2d(1, 2, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2)
            ),
        ),
        3.0,
    )
    return net.to(dtype), randn(2, 1, 6, 6, seed=32, dtype=dtype), True


# -- parametrisations ------------------------------------------------------------------------------


def _spectral_mlp():
    net = nn.Sequential(
        parametrizations.spectral_norm(nn.Linear(3, 8)),
        nn.Softplus(),
        parametrizations.spectral_norm(nn.Linear(8, 2)),
    )
    with torch.no_grad():  # power iterations run in train mode only: converge them, then freeze
        for _ in range(10):
            net(torch.zeros(1, 3))
    return net.eval()


@case(
    "weight-norm-mlp",
    "parametrization",
    "parametrizations.weight_norm on both Linear",
    direct_first,
)
def _(dtype):
    net = seeded(
        30,
        lambda: nn.Sequential(
            parametrizations.weight_norm(nn.Linear(3, 8)),
            nn.Tanh(),
            parametrizations.weight_norm(nn.Linear(8, 2)),
        ),
    )
    return net.to(dtype), randn(4, 3, seed=33, dtype=dtype), True


@case(
    "spectral-norm-mlp-eval",
    "parametrization",
    "spectral_norm, eval mode (u, v frozen)",
    direct_first,
)
def _(dtype):
    return seeded(31, _spectral_mlp).to(dtype), randn(4, 3, seed=34, dtype=dtype), True


@case(
    "orthogonal-parametrization-mlp", "parametrization", "parametrizations.orthogonal", direct_first
)
def _(dtype):
    net = seeded(
        32,
        lambda: nn.Sequential(
            nn.Linear(3, 4),
            nn.Tanh(),
            parametrizations.orthogonal(nn.Linear(4, 4)),
            nn.Tanh(),
            nn.Linear(4, 2),
        ),
    )
    return net.to(dtype), randn(4, 3, seed=35, dtype=dtype), True


@case("weight-norm-conv", "parametrization", "weight_norm on a Conv2d")
def _(dtype):
    net = seeded(
        33,
        lambda: nn.Sequential(
            parametrizations.weight_norm(nn.Conv2d(1, 2, 3)),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(2 * 4 * 4, 2),
        ),
    )
    return net.to(dtype), randn(2, 1, 6, 6, seed=36, dtype=dtype), True


# -- softmax heads ---------------------------------------------------------------------------------


class TemperatureSoftmax(nn.Module):
    def __init__(self, temperature=2.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 6), nn.GELU(), nn.Linear(6, 4))
        self.temperature = temperature

    def forward(self, x):
        return F.softmax(self.net(x) / self.temperature, dim=-1)


@case("softmax-head-mlp", "head", "Sequential ending in Softmax(dim=-1)", direct_first)
def _(dtype):
    net = seeded(
        34, lambda: nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4), nn.Softmax(dim=-1))
    )
    return net.to(dtype), randn(4, 3, seed=37, dtype=dtype), True


@case("log-softmax-head-mlp", "head", "Sequential ending in LogSoftmax(dim=1)")
def _(dtype):
    net = seeded(
        35, lambda: nn.Sequential(nn.Linear(4, 8), nn.ELU(), nn.Linear(8, 3), nn.LogSoftmax(dim=1))
    )
    return net.to(dtype), randn(3, 4, seed=38, dtype=dtype), True


@case("softmax-temperature-forward", "head", "F.softmax(logits / T) in a forward", direct_first)
def _(dtype):
    return seeded(36, TemperatureSoftmax).to(dtype), randn(4, 3, seed=39, dtype=dtype), True


# -- losses as f -----------------------------------------------------------------------------------


class PerSampleLoss(nn.Module):
    """``loss(net(x), target, reduction='none')`` with a fixed target per sample (averaged over
    ``mean_dim`` when given)."""

    def __init__(self, net, loss, target, mean_dim=None):
        super().__init__()
        self.net, self.loss, self.mean_dim = net, loss, mean_dim
        self.register_buffer("target", target)

    def loss_of(self, x, target):
        out = self.loss(self.net(x), target, reduction="none")
        return out if self.mean_dim is None else out.mean(dim=self.mean_dim)

    def forward(self, x):
        return self.loss_of(x, self.target)

    @staticmethod
    def first_sample(f, x):
        """One sample's loss, as a user writes it for a single example."""
        return (lambda s: f.loss_of(s[None], f.target[:1])[0]), x[0]


def _classifier(seed, n_in=4, n_classes=3, log_softmax=False):
    def make():
        layers = [nn.Linear(n_in, 6), nn.Tanh(), nn.Linear(6, n_classes)]
        return nn.Sequential(*layers, *([nn.LogSoftmax(dim=-1)] if log_softmax else []))

    return seeded(seed, make)


LABELS = torch.tensor([0, 2, 1])


@case("cross-entropy-loss-mean", "loss", "F.cross_entropy(net(x), labels) over a batch of 3")
def _(dtype):
    net = _classifier(37).to(dtype)
    return (lambda x: F.cross_entropy(net(x), LABELS)), randn(3, 4, seed=40, dtype=dtype), False


@case("nll-loss-sum", "loss", "F.nll_loss(log_softmax net, labels, reduction='sum')")
def _(dtype):
    net = _classifier(38, log_softmax=True).to(dtype)
    f = lambda x: F.nll_loss(net(x), LABELS, reduction="sum")  # noqa: E731
    return f, randn(3, 4, seed=41, dtype=dtype), False


@case("mse-loss-mean", "loss", "F.mse_loss(net(x), targets)")
def _(dtype):
    net = seeded(39, lambda: nn.Sequential(nn.Linear(3, 6), nn.SiLU(), nn.Linear(6, 2))).to(dtype)
    targets = randn(4, 2, seed=42, dtype=dtype)
    return (lambda x: F.mse_loss(net(x), targets)), randn(4, 3, seed=43, dtype=dtype), False


@case("bce-with-logits-loss", "loss", "binary cross-entropy with logits, mean over the batch")
def _(dtype):
    net = seeded(40, lambda: nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))).to(dtype)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=dtype)
    f = lambda x: F.binary_cross_entropy_with_logits(net(x)[:, 0], y)  # noqa: E731
    return f, randn(4, 3, seed=44, dtype=dtype), False


@case(
    "cross-entropy-per-sample",
    "loss",
    "reduction='none', one loss per sample, batched",
    PerSampleLoss.first_sample,
)
def _(dtype):
    f = PerSampleLoss(_classifier(41), F.cross_entropy, LABELS).to(dtype)
    return f, randn(3, 4, seed=45, dtype=dtype), True


@case(
    "mse-per-sample",
    "loss",
    "F.mse_loss(reduction='none').mean(1) per sample, batched",
    PerSampleLoss.first_sample,
)
def _(dtype):
    net = seeded(42, lambda: nn.Sequential(nn.Linear(3, 6), nn.Softplus(), nn.Linear(6, 2)))
    f = PerSampleLoss(net, F.mse_loss, randn(4, 2, seed=46, dtype=F32), mean_dim=1)
    return f.to(dtype), randn(4, 3, seed=47, dtype=dtype), True


# -- Fourier features, SIREN -----------------------------------------------------------------------


class FourierFeatures(nn.Module):
    """``[sin(2π x B), cos(2π x B)]`` with a fixed Gaussian ``B``."""

    def __init__(self, n_in, n_features, scale):
        super().__init__()
        self.register_buffer("B", scale * torch.randn(n_in, n_features))

    def forward(self, x):
        proj = 2 * math.pi * x @ self.B
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class FourierFeatureNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("B", torch.randn(2, 6))
        self.fc1, self.fc2 = nn.Linear(12, 8), nn.Linear(8, 1)

    def forward(self, x):
        proj = 2 * math.pi * x @ self.B
        h = torch.cat([proj.sin(), proj.cos()], dim=-1)
        return self.fc2(torch.tanh(self.fc1(h)))


class Sine(nn.Module):
    def __init__(self, w0=1.0):
        super().__init__()
        self.w0 = w0

    def forward(self, x):
        return torch.sin(self.w0 * x)


class SineLayer(nn.Module):
    """SIREN layer ``sin(w0 (W x + b))`` with its scaled uniform initialisation."""

    def __init__(self, n_in, n_out, w0=30.0, first=False):
        super().__init__()
        self.w0, self.linear = w0, nn.Linear(n_in, n_out)
        bound = 1 / n_in if first else math.sqrt(6 / n_in) / w0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x):
        return torch.sin(self.w0 * self.linear(x))


def _siren():
    net = nn.Sequential(SineLayer(2, 8, first=True), SineLayer(8, 8), nn.Linear(8, 1))
    with torch.no_grad():
        bound = math.sqrt(6 / 8) / 30
        net[-1].weight.uniform_(-bound, bound)
    return net


@case(
    "fourier-features-mlp", "fourier", "sin/cos(2π x B) features in a custom forward", direct_first
)
def _(dtype):
    net = seeded(43, FourierFeatureNet).to(dtype)
    return net, uniform(4, 2, seed=48, dtype=dtype, low=0.0, high=1.0), True


@case(
    "fourier-features-sequential",
    "fourier",
    "a FourierFeatures module inside nn.Sequential",
    direct_first,
)
def _(dtype):
    net = seeded(
        44,
        lambda: nn.Sequential(
            FourierFeatures(2, 4, scale=1.0), nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 2)
        ),
    )
    return net.to(dtype), uniform(4, 2, seed=49, dtype=dtype, low=0.0, high=1.0), True


@case("siren-mlp", "siren", "SineLayer(w0=30) with SIREN's initialisation", direct_first)
def _(dtype):
    return seeded(45, _siren).to(dtype), uniform(4, 2, seed=50, dtype=dtype), True


@case(
    "siren-sequential-sine-module",
    "siren",
    "Linear, Sine(w0=30), Linear, Sine(1), Linear",
    direct_first,
)
def _(dtype):
    def make():
        net = nn.Sequential(
            nn.Linear(2, 8), Sine(30.0), nn.Linear(8, 8), Sine(1.0), nn.Linear(8, 1)
        )
        with torch.no_grad():
            net[0].weight.uniform_(-0.5, 0.5)
            net[2].weight.uniform_(-math.sqrt(6 / 8) / 30, math.sqrt(6 / 8) / 30)
        return net

    return seeded(46, make).to(dtype), uniform(4, 2, seed=51, dtype=dtype), True


# -- polynomial nets -------------------------------------------------------------------------------


class TwoBranchProduct(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
        self.b = nn.Sequential(nn.Linear(3, 6), nn.Sigmoid(), nn.Linear(6, 2))

    def forward(self, x):
        return self.a(x) * self.b(x)


class Cube(nn.Module):
    def forward(self, x):
        return x**3


class PiNet(nn.Module):
    """A third-degree polynomial net: Hadamard products of linear maps of x."""

    def __init__(self, n_in=3, width=5, n_out=2):
        super().__init__()
        self.U1, self.U2, self.U3 = (nn.Linear(n_in, width) for _ in range(3))
        self.C = nn.Linear(width, n_out)

    def forward(self, x):
        h = self.U1(x)
        h = self.U2(x) * h + h
        h = self.U3(x) * h + h
        return self.C(h)


@case("polynomial-two-branch-product", "polynomial", "a(x) * b(x)", direct_first)
def _(dtype):
    return seeded(47, TwoBranchProduct).to(dtype), randn(4, 3, seed=52, dtype=dtype), True


@case("polynomial-cube-activation", "polynomial", "Sequential with a x**3 module", direct_first)
def _(dtype):
    net = seeded(48, lambda: nn.Sequential(nn.Linear(3, 6), Cube(), nn.Linear(6, 2)))
    return net.to(dtype), randn(4, 3, seed=53, dtype=dtype), True


@case("polynomial-pi-net", "polynomial", "h = U2 x ⊙ h + h, twice", direct_first)
def _(dtype):
    return seeded(49, PiNet).to(dtype), randn(4, 3, seed=54, dtype=dtype), True


# -- CNNs ------------------------------------------------------------------------------------------


class Conv2dNormActivation(nn.Sequential):
    """Conv2d (no bias), BatchNorm2d, SiLU(inplace=True): the common vision building block."""

    def __init__(self, c_in, c_out, kernel_size=3):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.SiLU(inplace=True),
        )


class BasicBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


@case("cnn-groupnorm-silu", "cnn", "Conv2d, GroupNorm, SiLU, AdaptiveAvgPool2d(2), Linear")
def _(dtype):
    net = seeded(
        50,
        lambda: trained_norms(
            nn.Sequential(
                nn.Conv2d(1, 4, 3, padding=1),
                nn.GroupNorm(2, 4),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d(2),
                nn.Flatten(),
                nn.Linear(16, 3),
            )
        ),
    )
    return net.to(dtype), randn(2, 1, 6, 6, seed=55, dtype=dtype), True


@case("cnn-maxpool-tanh", "cnn", "Conv2d, Tanh, MaxPool2d(2), Linear")
def _(dtype):
    net = seeded(
        51,
        lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 2)
        ),
    )
    return net.to(dtype), randn(2, 1, 6, 6, seed=56, dtype=dtype), True


@case("cnn-convtranspose-decoder", "cnn", "Linear, Unflatten, ConvTranspose2d, Sigmoid, Linear")
def _(dtype):
    net = gain(
        seeded(
            52,
            lambda: nn.Sequential(
                nn.Linear(4, 18),
                nn.Tanh(),
                nn.Unflatten(1, (2, 3, 3)),
                nn.ConvTranspose2d(2, 1, 2, stride=2),
                nn.Sigmoid(),
                nn.Flatten(),
                nn.Linear(36, 2),
            ),
        ),
        3.0,
    )
    return net.to(dtype), randn(3, 4, seed=57, dtype=dtype), True


@case("cnn-adaptive-avgpool-gelu", "cnn", "two channels in, GELU, AdaptiveAvgPool2d(1)")
def _(dtype):
    net = seeded(
        53,
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
        ),
    )
    return net.to(dtype), randn(2, 2, 5, 5, seed=58, dtype=dtype), True


@case("conv2dnormactivation-silu-inplace", "cnn", "Conv-BN(eval)-SiLU(inplace) blocks, pooled")
def _(dtype):
    net = gain(
        seeded(
            54,
            lambda: trained_norms(
                nn.Sequential(
                    Conv2dNormActivation(1, 4),
                    Conv2dNormActivation(4, 4),
                    nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(),
                    nn.Linear(4, 3),
                )
            ),
        ),
        3.0,
    )
    return net.to(dtype).eval(), randn(2, 1, 6, 6, seed=59, dtype=dtype), True


@case("cnn-resnet-basic-block", "cnn", "residual conv block, BN eval, ReLU(inplace), tanh head")
def _(dtype):
    net = gain(
        seeded(
            55,
            lambda: trained_norms(
                nn.Sequential(
                    nn.Conv2d(1, 2, 3, padding=1),
                    BasicBlock(2),
                    nn.Flatten(),
                    nn.Linear(2 * 5 * 5, 4),
                    nn.Tanh(),
                    nn.Linear(4, 2),
                )
            ),
        ),
        3.0,
    )
    return net.to(dtype).eval(), randn(2, 1, 5, 5, seed=60, dtype=dtype), True


# -- unbatched single-channel inputs ---------------------------------------------------------------


@case("conv1d-unbatched-single-channel", "unbatched-conv", "Conv1d on x of shape (1, 8)")
def _(dtype):
    net = seeded(
        56, lambda: nn.Sequential(nn.Conv1d(1, 3, 3), nn.Tanh(), nn.Flatten(0), nn.Linear(18, 2))
    )
    return net.to(dtype), randn(1, 8, seed=61, dtype=dtype), False


@case("conv2d-unbatched-single-channel", "unbatched-conv", "Conv2d on x of shape (1, 6, 6)")
def _(dtype):
    net = gain(
        seeded(
            57,
            lambda: nn.Sequential(
                nn.Conv2d(1, 2, 3), nn.Softplus(), nn.Flatten(0), nn.Linear(32, 2)
            ),
        ),
        3.0,
    )
    return net.to(dtype), randn(1, 6, 6, seed=62, dtype=dtype), False


@case("conv2d-unbatched-avgpool", "unbatched-conv", "Conv2d, Tanh, AvgPool2d on (1, 6, 6)")
def _(dtype):
    net = seeded(
        58,
        lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Flatten(0),
            nn.Linear(27, 1),
        ),
    )
    return net.to(dtype), randn(1, 6, 6, seed=63, dtype=dtype), False


# -- attention -------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """softmax(q kᵀ / √d) v, written out."""

    def __init__(self, d=4):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.scale = 1 / math.sqrt(d)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        weights = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        return self.out(weights @ v)


class SDPAttention(SelfAttention):
    """The same with ``F.scaled_dot_product_attention``."""

    def forward(self, x):
        return self.out(F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x)))


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x)[0]


def _encoder():
    return nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)


@case("attention-block-by-hand", "attention", "q, k, v Linear; softmax(q kᵀ/√d) v", direct_first)
def _(dtype):
    return seeded(59, SelfAttention).to(dtype), randn(2, 3, 4, seed=64, dtype=dtype), True


@case("attention-sdpa-functional", "attention", "F.scaled_dot_product_attention", direct_first)
def _(dtype):
    return seeded(60, SDPAttention).to(dtype), randn(2, 3, 4, seed=65, dtype=dtype), True


@case(
    "multihead-attention-module",
    "attention",
    "nn.MultiheadAttention(4, 2), self-attention",
    direct_first,
)
def _(dtype):
    return seeded(61, MHA).to(dtype).eval(), randn(2, 3, 4, seed=66, dtype=dtype), True


@case("transformer-encoder-eval", "attention", "TransformerEncoderLayer(8, 2).eval() on (3, 8)")
def _(dtype):
    return seeded(62, _encoder).to(dtype).eval(), randn(3, 8, seed=67, dtype=dtype), False


@case(
    "transformer-encoder-eval-batched",
    "attention",
    "the same layer on a batch (2, 3, 8)",
    direct_first,
)
def _(dtype):
    return seeded(63, _encoder).to(dtype).eval(), randn(2, 3, 8, seed=68, dtype=dtype), True


# -- recurrent nets --------------------------------------------------------------------------------


class LastStep(nn.Module):
    """A recurrent net read out at the last time step."""

    def __init__(self, rnn, n_out):
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(rnn.hidden_size, n_out)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@case("lstm-last-step-head", "recurrent", "nn.LSTM(batch_first=True), Linear on the last step")
def _(dtype):
    net = seeded(64, lambda: LastStep(nn.LSTM(2, 4, batch_first=True), 1))
    return net.to(dtype), randn(3, 4, 2, seed=69, dtype=dtype), True


@case("gru-last-step-head", "recurrent", "nn.GRU(batch_first=True), Linear on the last step")
def _(dtype):
    net = seeded(65, lambda: LastStep(nn.GRU(2, 4, batch_first=True), 2))
    return net.to(dtype), randn(3, 4, 2, seed=70, dtype=dtype), True


# -- MLPs with a train-mode Dropout(p=0) -----------------------------------------------------------


def _mlp_block(sizes, activation):
    """Linear, activation, Dropout(p=0.0) per hidden layer; Linear, Dropout(p=0.0) last."""
    layers = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), activation(), nn.Dropout(0.0)]
    layers += [nn.Linear(sizes[-2], sizes[-1]), nn.Dropout(0.0)]
    return nn.Sequential(*layers)  # left in train mode, as the common helper returns it


@case(
    "mlp-gelu-dropout-zero-train",
    "dropout",
    "GELU MLP with Dropout(p=0.0) in train mode",
    direct_first,
)
def _(dtype):
    net = seeded(66, lambda: _mlp_block([3, 8, 8, 2], nn.GELU))
    return net.to(dtype).train(), randn(4, 3, seed=71, dtype=dtype), True


@case(
    "mlp-relu-dropout-zero-train",
    "dropout",
    "ReLU MLP with Dropout(p=0.0), train: H = 0",
    direct_first,
)
def _(dtype):
    net = seeded(67, lambda: _mlp_block([3, 8, 2], nn.ReLU))
    return net.to(dtype).train(), randn(4, 3, seed=72, dtype=dtype), True


# -- Gaussian-process marginal likelihood ----------------------------------------------------------

GP_TARGETS = torch.tensor([0.3, -0.5, 0.8, 0.1, -0.2])


def _rbf(x, lengthscale=0.8, noise=0.1):
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # no sqrt: smooth at i = j
    return torch.exp(-0.5 * d2 / lengthscale**2) + noise * torch.eye(x.shape[0], dtype=x.dtype)


def gp_nll_solve(x):
    K, y = _rbf(x), GP_TARGETS.to(x.dtype)
    return 0.5 * y @ torch.linalg.solve(K, y) + 0.5 * torch.logdet(K)


def gp_nll_cholesky(x):
    K, y = _rbf(x), GP_TARGETS.to(x.dtype)
    L = torch.linalg.cholesky(K)
    alpha = torch.cholesky_solve(y[:, None], L)[:, 0]
    return 0.5 * y @ alpha + torch.log(torch.diagonal(L)).sum()


@case("gp-marginal-likelihood-solve-logdet", "gaussian-process", "RBF kernel of 5 points in 2-D")
def _(dtype):
    return gp_nll_solve, uniform(5, 2, seed=73, dtype=dtype), False


@case("gp-marginal-likelihood-cholesky", "gaussian-process", "the same through cholesky_solve")
def _(dtype):
    return gp_nll_cholesky, uniform(5, 2, seed=74, dtype=dtype), False


# -- plain functions -------------------------------------------------------------------------------


@case("logsumexp-plus-quadratic", "functional", "logsumexp(x A) + |x|²/2 per row", direct_first)
def _(dtype):
    A = randn(4, 5, seed=75, dtype=dtype)
    f = lambda x: torch.logsumexp(x @ A, dim=-1) + 0.5 * (x * x).sum(-1)  # noqa: E731
    return f, randn(3, 4, seed=76, dtype=dtype), True


@case("vector-norm-cubed", "functional", "torch.linalg.vector_norm(x, dim=-1) ** 3", direct_first)
def _(dtype):
    f = lambda x: torch.linalg.vector_norm(x, dim=-1) ** 3  # noqa: E731
    return f, randn(3, 4, seed=77, dtype=dtype), True


CATALOGUE_IDS = [c.id for c in CATALOGUE]
BY_ID = {c.id: c for c in CATALOGUE}
assert len(BY_ID) == len(CATALOGUE), "catalogue ids must be distinct"


# -- the reference ---------------------------------------------------------------------------------


def _double_backward_hessian(f, x: torch.Tensor) -> torch.Tensor:
    """Hessian of every output of ``f`` at ``x`` by double backward: ``S_out + S_in + S_in``."""
    x = x.detach().requires_grad_(True)
    y = f(x)
    rows = []
    for yi in y.reshape(-1):
        (g,) = torch.autograd.grad(yi, x, create_graph=True, allow_unused=True)
        if g is None or not g.requires_grad:
            rows.append(torch.zeros(x.numel(), x.numel(), dtype=x.dtype))
            continue
        g = g.reshape(-1)
        cols = [torch.autograd.grad(gj, x, retain_graph=True, allow_unused=True)[0] for gj in g]
        rows.append(
            torch.stack([torch.zeros_like(x) if c is None else c for c in cols]).reshape(
                x.numel(), x.numel()
            )
        )
    return torch.stack(rows).reshape(*y.shape, *x.shape, *x.shape).detach()


def full_hessian(f, x: torch.Tensor) -> torch.Tensor:
    """The Hessian of ``f`` at the whole ``x`` (``f(x).shape + x.shape + x.shape``).

    ``torch.func.hessian`` (forward-over-reverse); double backward where torch.func cannot run the
    model. Attention runs with PyTorch's math kernel: the same function, but the fused CPU
    kernels have neither a forward-mode rule nor a double backward.
    """
    with sdpa_kernel(SDPBackend.MATH):
        try:
            return torch.func.hessian(f)(x).detach()
        except (RuntimeError, NotImplementedError):
            return _double_backward_hessian(f, x)


def per_sample_blocks(H: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B, *S_out, B, *S_in, B, *S_in)`` → the per-sample blocks ``(B, *S_out, *S_in, *S_in)``."""
    B, n = x.shape[0], x[0].numel()
    M = H.numel() // (B * B * n * B * n)
    Hb = H.reshape(B, M, B, n, B, n)
    blocks = torch.stack([Hb[b, :, b, :, b, :] for b in range(B)])
    return blocks.reshape(B, *H.shape[1 : H.dim() - 2 * x.dim()], *x.shape[1:], *x.shape[1:])


def cross_sample_max(H: torch.Tensor, x: torch.Tensor) -> float:
    """Largest |entry| of the full Hessian that couples different samples (0 when independent)."""
    B, n = x.shape[0], x[0].numel()
    Hb = H.reshape(B, -1, B, n, B, n).clone()
    for b in range(B):
        Hb[b, :, b, :, b, :] = 0
    return Hb.abs().max().item()


def reference(f, x: torch.Tensor, batched: bool) -> torch.Tensor:
    """The float64 reference: the Hessian in hessviz's layout (``S_out + S_in + S_in``; batched:
    a leading ``B`` of per-sample Hessians, read off the Hessian of the whole batch)."""
    H = full_hessian(f, x)
    return per_sample_blocks(H, x) if batched else H
