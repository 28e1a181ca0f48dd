"""The estimator network: a permutation-invariant 2D-attention quantile regressor.

Input: a `Batch` (see model/preprocess.py). Output: (B, Q) non-decreasing, >= 0
quantiles of t = log1p(MI in nats) at `ModelConfig.quantile_levels`.

Architecture (invariances hold exactly, by construction):

1. Cell layers on a row subsample (<= `cell_rows` rows, chosen invariantly in
   preprocessing). A cell token (sample i, coordinate j) is embedded from its value
   only: no coordinate index, so coordinates within x and within y are exchangeable.
   Each layer = feature-axis self-attention within a row (sequence of dx + dy cells)
   + sample-axis attention within a column through inducing points (ISAB).
   X/Y roles: instead of "a learned X-or-Y role vector" added to each cell (DESIGN.md),
   the feature-axis attention adds a learned per-head bias for same-group vs
   cross-group pairs. The model still knows which cells belong together, but
   nothing distinguishes "the x group" from "the y group", so swapping x and y gives
   exactly the same output, without the cost of averaging both orders (a role vector
   would need that averaging, doubling the cost, to be symmetric).
2. Column context: masked mean of each column's cell tokens over the subsample, plus
   (``use_col_stats``) an embedding of the column's dependence features (how strongly
   it depends on the other block: `model.preprocess.column_statistics`), turned into
   per-column weights W_j (basis x dim). Without a cell layer or those features every
   copula-transformed column has nearly the same context, so all coordinates are
   weighted alike in step 3.
3. Row level (all rows): each cell value z_ij -> K learned scalar basis functions
   phi_k(z) = GELU(a_k z + b_k); the row's x summary is the masked mean over x columns
   of sum_k phi_k(z_ij) W_jk (one batched matmul over (column, basis) pairs, so the
   per-cell cost is K scalars, not a dim-wide token), likewise py; they are combined
   only through symmetric functions (px + py, px * py, |px - py|) with the row's kNN
   features -> one token per row; ISAB layers over rows (linear in n); PMA pooling.
4. Head: [pooled vector, symmetric column-context summary, set statistics (with
   ``use_nonlinear_stats`` also nonlinear-dependence statistics, with ``use_raw_stats`` the
   Gaussian MI of the raw values' canonical correlations)] -> MLP ->
   first quantile softplus, each next = previous + softplus (non-crossing, >= 0).
5. Optional refiner (``refine_hidden`` > 0, `add_refiner`): a small MLP that reads only the
   head's own quantiles and the set statistics (a few dozen numbers, standardized by stored
   buffers) and adds a correction to the head's pre-softplus outputs. Stacking on the
   network's answer: fitted with the rest frozen on precomputed outputs
   (`scripts/fit_refiner.py`), it can take in many epochs what the statistics still tell.

Padded rows and columns never change any output (attention masks, masked means).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.blocks import ISAB, PMA, SAB
from model.preprocess import COL_FEATURES, KNN_FEATURES, SHAPE_FEATURES, Batch, ksg_stats_slice, stats_dim, stats_layout

REFINE_INPUTS = ("stats", "head", "stats+shape")
DEFAULT_LEVELS = (0.01, 0.025, 0.05) + tuple(round(0.1 + 0.05 * i, 2) for i in range(17)) + (0.95, 0.975, 0.99)


@dataclass
class ModelConfig:
    """Hyper-parameters of `MIEstimator`; stored inside the checkpoint as JSON."""

    dim: int = 32  # hidden size of every token (cells, rows, pooled vector)
    heads: int = 2  # attention heads (dim must be divisible by heads)
    ffn_mult: int = 1  # feed-forward hidden size = ffn_mult * dim in every attention block
    cell_layers: int = 1  # 2D (feature-axis + sample-axis) attention layers on the cell tokens
    cell_rows: int = 32  # row subsample seen by the cell layers (all rows reach the row-level part)
    inducing: int = 8  # inducing points for sample-axis attention (ISAB), cells and rows
    row_layers: int = 1  # ISAB layers over row tokens
    basis: int = 8  # learned scalar basis functions per cell in the row-level part (see MIEstimator)
    head_hidden: int = 64  # hidden width of the quantile head MLP
    input_transform: str = "copula"  # "copula" (rank -> normal scores) or "standardize" (raw, for ablation)
    use_cca: bool = True  # canonical-correlation + Gaussian-copula-MI statistics as inputs
    cca_top: int = 8  # number of top canonical pairs given to the head (0-padded)
    use_knn: bool = True  # kNN (KSG-style) per-row statistics as inputs
    knn_k: int = 3  # neighbours for the kNN statistics
    knn_rows: int = 256  # kNN reference rows (every row is a query against them)
    knn_quantize: bool = False  # kNN distances on scores rounded to 1/4096, in int16: ~2x faster (False: exact float32)
    use_col_stats: bool = False  # per-column dependence features in the column context (False: older checkpoints)
    use_nonlinear_stats: bool = False  # nonlinear-dependence set statistics for the head (False: older checkpoints)
    use_raw_stats: bool = False  # Gaussian MI of the raw values' canonical correlations for the head (False: older checkpoints)
    refine_hidden: int = 0  # hidden width of the refiner MLPs on [head quantiles, statistics] (0: none, older checkpoints)
    refine_members: int = 1  # refiner MLPs, fitted apart, whose corrections are averaged (an ensemble)
    refine_inputs: str = "stats"  # what the refiner reads besides the head's quantiles: "stats", "head" (its whole
    # input) or "stats+shape" (the statistics and the raw columns' marginal shape, `marginal_shape_statistics`)
    strata: int = 8  # at most this many strata of the row norms in them (fewer when n < 2 strata (dx + dy))
    quantile_levels: tuple[float, ...] = field(default=DEFAULT_LEVELS)  # fixed output grid, increasing in (0, 1)

    def __post_init__(self) -> None:
        self.quantile_levels = tuple(float(q) for q in self.quantile_levels)
        lv = self.quantile_levels
        if len(lv) < 2 or not all(0 < a < b < 1 for a, b in zip(lv, lv[1:])) or not 0 < lv[0]:
            raise ValueError(f"quantile_levels must be >= 2 strictly increasing values in (0, 1), got {lv}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.refine_inputs not in REFINE_INPUTS:
            raise ValueError(f"refine_inputs must be one of {REFINE_INPUTS}, got {self.refine_inputs!r}")
        if self.input_transform not in ("copula", "standardize"):
            raise ValueError(f"input_transform must be 'copula' or 'standardize', got {self.input_transform!r}")
        for name in ("dim", "heads", "ffn_mult", "cell_rows", "inducing", "basis", "head_hidden", "knn_k", "knn_rows",
                     "refine_members"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.strata < 2:
            raise ValueError(f"strata must be >= 2, got {self.strata}")
        if self.cell_rows < 2 or self.knn_rows < 2:
            raise ValueError("cell_rows and knn_rows must be >= 2")
        for name in ("cell_layers", "row_layers", "cca_top", "refine_hidden"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        """JSON-ready dict (quantile_levels as a list)."""
        d = dataclasses.asdict(self)
        d["quantile_levels"] = list(self.quantile_levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of `to_dict`; unknown keys raise ValueError (missing keys take defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}")
        return cls(**d)


def _masked_mean(x: Tensor, valid: Tensor, dim: int) -> Tensor:
    """Mean of x over `dim` where valid (bool, x.shape without the trailing feature dim)."""
    w = valid.to(x.dtype)
    w = w / w.sum(dim=dim, keepdim=True).clamp_min(1.0)
    return (x * w.unsqueeze(-1)).sum(dim=dim)


def _scalar_linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """layer(x.unsqueeze(-1)) for an nn.Linear(1, k): bias + x * w in one fused op.

    The same values as the matmul (a product and a sum per output) without the (cells, 1)
    x (1, k) matmul and the copy of its output, which cost several times more on CPU.
    """
    return torch.addcmul(layer.bias, x.unsqueeze(-1), layer.weight[:, 0])


def _zero_residual_outputs(linears) -> None:
    """Zero the weights and biases of the given output projections (new layers start as the identity)."""
    with torch.no_grad():
        for linear in linears:
            linear.weight.zero_()
            linear.bias.zero_()


class CellLayer(nn.Module):
    """One 2D attention layer: feature-axis attention within rows, then sample-axis ISAB within columns."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.feature = SAB(config.dim, config.heads, config.ffn_mult)
        self.group_bias = nn.Parameter(torch.zeros(2, config.heads))  # [same group, other group] per head
        self.sample = ISAB(config.dim, config.heads, config.inducing, config.ffn_mult)

    def forward(self, h: Tensor, same: Tensor, col_valid: Tensor, row_valid: Tensor) -> Tensor:
        """h (B, R, D, dim); same (D, D) bool same-group; col_valid (B, D); row_valid (B, R)."""
        bias = torch.where(same, self.group_bias[0][:, None, None], self.group_bias[1][:, None, None])  # (H, D, D)
        if bool(col_valid.all()):  # no padded column: the bias is the whole mask
            mask = bias
        else:
            mask = bias.masked_fill(~col_valid[:, None, None, None, :], float("-inf"))  # (B, 1, H, D, D)
        h = self.feature(h, mask)
        ht = h.transpose(1, 2).contiguous()  # (B, D, R, dim); one copy instead of one per LayerNorm
        ht = self.sample(ht, row_valid[:, None, :].expand(-1, ht.shape[1], -1))
        return ht.transpose(1, 2)


class Refiner(nn.Module):
    """Correction of the head's pre-softplus outputs from [its quantiles, set statistics].

    `members` MLPs (fitted apart, `scripts/fit_refiner.py`) each propose a correction; their mean
    is added. Inputs are standardized by the buffers `shift` and `scale` (set from the fitting
    data; identity until then); the last layers start at zero, so a new refiner leaves the
    network's function unchanged.
    """

    def __init__(self, n_in: int, hidden: int, q: int, members: int = 1):
        super().__init__()
        self.register_buffer("shift", torch.zeros(n_in))
        self.register_buffer("scale", torch.ones(n_in))
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, q))
            for _ in range(members))
        _zero_residual_outputs(net[-1] for net in self.nets)

    def corrections(self, raw: Tensor, stats: Tensor) -> Tensor:
        """raw (B, Q) head outputs, stats (B, S) -> each member's correction (M, B, Q)."""
        own = torch.cumsum(F.softplus(raw), dim=-1)  # (B, Q) the head's quantiles of log1p(MI)
        z = (torch.cat([own, stats], dim=-1) - self.shift) / self.scale  # (B, Q + S)
        return torch.stack([net(z) for net in self.nets])

    def forward(self, raw: Tensor, stats: Tensor) -> Tensor:
        """raw (B, Q) head outputs, stats (B, S) -> raw + mean correction (B, Q)."""
        return raw + self.corrections(raw, stats).mean(0)


class MIEstimator(nn.Module):
    """Amortized MI estimator: `forward(batch)` -> (B, Q) quantiles of log1p(MI [nats])."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.value_embed = nn.Sequential(nn.Linear(1, dim), nn.GELU(), nn.Linear(dim, dim))
        self.cell_layers = nn.ModuleList(CellLayer(config) for _ in range(config.cell_layers))
        self.col_embed = None
        if config.use_col_stats:  # last layer zero: the features join without changing the function
            self.col_embed = nn.Sequential(nn.Linear(COL_FEATURES, dim), nn.GELU(), nn.Linear(dim, dim))
            _zero_residual_outputs([self.col_embed[-1]])
        self.ctx_norm = nn.LayerNorm(dim)
        self.basis = nn.Linear(1, config.basis)
        with torch.no_grad():  # diverse initial basis functions over the normal-score range
            self.basis.weight.normal_(0.0, 1.5)
            self.basis.bias.uniform_(-2.0, 2.0)
        self.col_weights = nn.Linear(dim, config.basis * dim)
        self.row_embed = nn.Sequential(nn.Linear(3 * dim + KNN_FEATURES, dim), nn.GELU(), nn.Linear(dim, dim))
        self.row_layers = nn.ModuleList(
            ISAB(dim, config.heads, config.inducing, config.ffn_mult) for _ in range(config.row_layers)
        )
        self.pool = PMA(dim, config.heads, 1, config.ffn_mult)
        self.pool_norm = nn.LayerNorm(dim)
        n_in = 3 * dim + stats_dim(config)
        q = len(config.quantile_levels)
        self.head = nn.Sequential(
            nn.Linear(n_in, config.head_hidden),
            nn.GELU(),
            nn.Linear(config.head_hidden, config.head_hidden),
            nn.GELU(),
            nn.Linear(config.head_hidden, q),
        )
        with torch.no_grad():  # start near a sensible spread: increments ~ softplus(-2)
            self.head[-1].bias.fill_(-2.0)
        self.refine = None
        if config.refine_hidden:
            n_ctx = stats_dim(config) + {"head": 3 * dim, "stats+shape": SHAPE_FEATURES}.get(config.refine_inputs, 0)
            self.refine = Refiner(q + n_ctx, config.refine_hidden, q, config.refine_members)

    def forward(self, batch: Batch) -> Tensor:
        """batch with B sets -> (B, Q) non-decreasing, >= 0 quantiles of t = log1p(MI in nats)."""
        head_in = self.head_input(batch)
        raw = self.head(head_in)
        if self.refine is not None:
            raw = self.refine(raw, self.refiner_context(head_in, self.config.refine_inputs, batch.shape))
        return torch.cumsum(F.softplus(raw), dim=-1)

    def refiner_context(self, head_in: Tensor, inputs: str, shape: Tensor | None = None) -> Tensor:
        """What a refiner reads besides the head's quantiles, from the head's input (B, 3 dim + S):
        "stats" the set statistics (B, S), "head" all of it, "stats+shape" the statistics, then
        `shape` (B, SHAPE_FEATURES) (``Batch.shape``, computed when the config reads it) -> (B, S + 10)."""
        if inputs not in REFINE_INPUTS:
            raise ValueError(f"refiner inputs must be one of {REFINE_INPUTS}, got {inputs!r}")
        if inputs == "head":
            return head_in
        stats = head_in[:, 3 * self.config.dim:]
        if inputs == "stats":
            return stats
        if shape is None or shape.shape != (head_in.shape[0], SHAPE_FEATURES):
            raise ValueError(f"refiner inputs 'stats+shape' need shape (B, {SHAPE_FEATURES}) statistics, got "
                             f"{None if shape is None else tuple(shape.shape)}")
        return torch.cat([stats, shape.to(stats.dtype)], dim=-1)

    def head_input(self, batch: Batch) -> Tensor:
        """The head's input (B, 3 dim + S): [pooled row tokens, x + y and x * y column-context means, set statistics]."""
        col_valid, is_y = batch.col_mask, batch.is_y
        x_valid = col_valid & ~is_y
        y_valid = col_valid & is_y
        same = is_y[:, None] == is_y[None, :]

        # 1. cell layers on the row subsample
        h = self.value_embed[2](self.value_embed[1](_scalar_linear(self.value_embed[0], batch.cells)))  # (B, R, D, dim)
        for layer in self.cell_layers:
            h = layer(h, same, col_valid, batch.cell_mask)
        ctx = _masked_mean(h.transpose(1, 2), batch.cell_mask[:, None, :].expand(-1, h.shape[2], -1), dim=2)
        if self.col_embed is not None:
            ctx = ctx + self.col_embed(batch.cols.to(ctx.dtype))  # (B, D, dim)
        ctx = self.ctx_norm(ctx)  # (B, D, dim) per-column context

        # 2.-3. every row: basis features of each cell, mixed by per-column weights, pooled in x and in y
        b, d, k = ctx.shape[0], ctx.shape[1], self.config.basis
        weights = self.col_weights(ctx).unflatten(-1, (k, -1))  # (B, D, K, dim)
        wx = x_valid.to(ctx.dtype) / x_valid.sum(dim=1, keepdim=True).clamp_min(1)  # masked-mean weights (B, D)
        wy = y_valid.to(ctx.dtype) / y_valid.sum(dim=1, keepdim=True).clamp_min(1)
        w = torch.cat([weights * wx[:, :, None, None], weights * wy[:, :, None, None]], dim=-1)  # (B, D, K, 2 dim)
        phi = F.gelu(_scalar_linear(self.basis, batch.rows))  # (B, N, D, K)
        pxy = torch.bmm(phi.flatten(2), w.reshape(b, d * k, -1))  # (B, N, 2 dim)
        px, py = pxy.chunk(2, dim=-1)
        tok = self.row_embed(torch.cat([px + py, px * py, (px - py).abs(), batch.knn], dim=-1))  # (B, N, dim)
        for layer in self.row_layers:
            tok = layer(tok, batch.row_mask)
        pooled = self.pool_norm(self.pool(tok, batch.row_mask)[:, 0])  # (B, dim)

        # 4. head on symmetric summaries
        cx = _masked_mean(ctx, x_valid, dim=1)
        cy = _masked_mean(ctx, y_valid, dim=1)
        return torch.cat([pooled, cx + cy, cx * cy, batch.stats.to(pooled.dtype)], dim=-1)

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


INPUT_SWITCHES = ("use_knn", "knn_k", "knn_rows", "knn_quantize")
"""ModelConfig fields that only choose which input statistics preprocessing computes:
changing them leaves every parameter's shape alone (disabled statistics are zeros)."""


def _rebuilt(model: MIEstimator, config: ModelConfig, strict: bool) -> MIEstimator:
    """A new MIEstimator(config) on `model`'s device and dtype holding `model`'s weights.

    strict=False: parameters that only the new config has (new row or cell layers, the
    column-feature embedding) keep their fresh initialisation; any other mismatch is an error.
    """
    ref = next(model.parameters())
    new = MIEstimator(config).to(device=ref.device, dtype=ref.dtype)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=strict)
    if unexpected or any(not k.startswith(("row_layers.", "cell_layers.", "col_embed.", "refine.")) for k in missing):
        raise RuntimeError(f"weights do not fit the new config: missing {missing}, unexpected {unexpected}")
    return new


def switch_inputs(model: MIEstimator, **changes) -> MIEstimator:
    """A new model with other input switches (`INPUT_SWITCHES`) and the weights of `model`.

    Turning the kNN statistics on zeroes the weights that read them (the row embedding's
    columns of the per-row kNN features, the head's columns of the two KSG statistics):
    they have only ever seen zeros, so the new model starts as exactly the old function
    and training then learns to use the new inputs.
    """
    bad = sorted(set(changes) - set(INPUT_SWITCHES))
    if bad:
        raise ValueError(f"switch_inputs changes only {INPUT_SWITCHES}, not {bad}")
    config = dataclasses.replace(model.config, **changes)
    new = _rebuilt(model, config, strict=True)
    if config.use_knn and not model.config.use_knn:
        dim, ksg = config.dim, ksg_stats_slice(config)
        with torch.no_grad():
            new.row_embed[0].weight[:, 3 * dim:].zero_()  # (dim, 3 dim + KNN_FEATURES)
            new.head[0].weight[:, 3 * dim + ksg.start:3 * dim + ksg.stop].zero_()  # (head_hidden, 3 dim + S): [3 dim, stats]
    return new.train(model.training)


def add_row_layers(model: MIEstimator, row_layers: int) -> MIEstimator:
    """A deeper model, `row_layers` ISAB layers over the row tokens, computing exactly `model`'s function.

    The new layers are appended after the trained ones with zero output projections in
    their second attention block (the attention's `out` and the feed-forward's last
    linear), so each starts as the identity on the row tokens (pre-norm residual blocks:
    out = x + 0) and training then grows it: more capacity for a trained model without
    starting over. All other weights are copied.
    """
    old = model.config.row_layers
    if row_layers < old:
        raise ValueError(f"add_row_layers: the model already has {old} row layers, asked for {row_layers}")
    new = _rebuilt(model, dataclasses.replace(model.config, row_layers=row_layers), strict=False)
    _zero_residual_outputs(lin for layer in new.row_layers[old:] for lin in (layer.mab_out.out, layer.mab_out.ffn[-1]))
    return new.train(model.training)


def add_cell_layers(model: MIEstimator, cell_layers: int) -> MIEstimator:
    """A model with `cell_layers` 2D cell layers, computing exactly `model`'s function.

    The new `CellLayer`s are appended after the trained ones (a model trained without
    any, like the shipped CPU checkpoint, gets its first) with zero output projections in
    both residual parts (the feature-axis SAB and the sample-axis ISAB's second block:
    attention `out` and feed-forward last linear), so each starts as the identity on the
    cell tokens and the column context is unchanged. Training then lets columns see one
    another: without a cell layer the per-column context is a mean of one column's own
    value embeddings, the same for every copula-transformed column up to noise.
    """
    old = model.config.cell_layers
    if cell_layers < old:
        raise ValueError(f"add_cell_layers: the model already has {old} cell layers, asked for {cell_layers}")
    new = _rebuilt(model, dataclasses.replace(model.config, cell_layers=cell_layers), strict=False)
    _zero_residual_outputs(
        lin
        for layer in new.cell_layers[old:]
        for lin in (layer.feature.mab.out, layer.feature.mab.ffn[-1], layer.sample.mab_out.out, layer.sample.mab_out.ffn[-1])
    )
    return new.train(model.training)


def add_column_statistics(model: MIEstimator) -> MIEstimator:
    """`model` with the per-column dependence features (``use_col_stats``) turned on, same function.

    The new embedding's last linear layer starts at zero (see `MIEstimator`), so the
    column context, and every output, is unchanged until training moves it.
    """
    if model.config.use_col_stats:
        return model
    return _rebuilt(model, dataclasses.replace(model.config, use_col_stats=True), strict=False).train(model.training)


def _with_more_statistics(model: MIEstimator, config: ModelConfig) -> MIEstimator:
    """A model for `config` (the same but for more blocks of set statistics, `stats_layout`) computing
    `model`'s function: the head's first layer reads each old block with its old weights and each new
    block with zero weights, wherever in the vector the new block sits."""
    if model.refine is not None:
        raise ValueError("add statistics before the refiner: its inputs would change (build it again after)")
    ref = next(model.parameters())
    new = MIEstimator(config).to(device=ref.device, dtype=ref.dtype)
    state = model.state_dict()
    w = state["head.0.weight"]  # (head_hidden, 3 dim + S_old): [pooled and context summaries, statistics]
    start = 3 * model.config.dim
    old_blocks, pos = {}, start
    for name, size in stats_layout(model.config):
        old_blocks[name] = w[:, pos:pos + size]
        pos += size
    parts = [w[:, :start]]
    for name, size in stats_layout(config):
        parts.append(old_blocks.get(name, w.new_zeros(w.shape[0], size)))
    state["head.0.weight"] = torch.cat(parts, dim=1)
    new.load_state_dict(state, strict=True)
    return new.train(model.training)


def add_nonlinear_statistics(model: MIEstimator, strata: int | None = None) -> MIEstimator:
    """`model` with the nonlinear-dependence set statistics (``use_nonlinear_stats``) on, same function.

    The statistics join the head's input (`model.preprocess.nonlinear_statistics`); the head's
    first layer gets zero weights for them, so every output is unchanged until training learns
    to read them. `strata`: at most this many strata (default: the config's).
    """
    if model.config.use_nonlinear_stats:
        return model
    return _with_more_statistics(
        model, dataclasses.replace(model.config, use_nonlinear_stats=True, strata=strata or model.config.strata))


def add_raw_statistics(model: MIEstimator) -> MIEstimator:
    """`model` with the raw values' Gaussian-MI statistics (``use_raw_stats``) on, same function.

    The statistics join the head's input (`model.preprocess.raw_statistics`) with zero weights in
    its first layer, so every output is unchanged until training learns to read them.
    """
    if model.config.use_raw_stats:
        return model
    return _with_more_statistics(model, dataclasses.replace(model.config, use_raw_stats=True))


def add_refiner(model: MIEstimator, hidden: int = 64, members: int = 1, inputs: str = "stats") -> MIEstimator:
    """`model` with a new refiner (`Refiner`: `members` MLPs of width `hidden` reading the head's quantiles and
    `inputs`, see `ModelConfig.refine_inputs`), same function (their last layers are zero). A model that has
    one already gets a fresh one (the old refiner is dropped).
    """
    if hidden < 1 or members < 1:
        raise ValueError(f"add_refiner: hidden and members must be >= 1, got {hidden} and {members}")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("refine.")}
    ref = next(model.parameters())
    config = dataclasses.replace(model.config, refine_hidden=hidden, refine_members=members, refine_inputs=inputs)
    new = MIEstimator(config).to(device=ref.device, dtype=ref.dtype)
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("refine.") for k in missing):
        raise RuntimeError(f"weights do not fit the new config: missing {missing}, unexpected {unexpected}")
    return new.train(model.training)


def widen(model: MIEstimator, dim: int, seed: int = 0) -> MIEstimator:
    """A wider model (hidden size `dim`, a multiple f of the old one) computing `model`'s function.

    Function-preserving widening (Net2WiderNet, Chen et al. 2016): new hidden unit j copies
    old unit j // f, so every vector of width dim (tokens, inducing points, seeds, layer
    norms, feed-forward hidden units) holds each old value f times and every attention
    head holds f copies of its old units (the heads keep their number; queries are scaled
    by f ** -0.5, since a head's dot products now count each old term f times). A linear
    layer that reads a widened vector splits each old weight among the copies in random
    positive shares that sum to one (`seed`): the output is unchanged (up to float
    rounding, tests/test_model.py), but the copies get different gradients and can grow
    apart in training. Layer norms see the same mean and variance. Used by
    ``train.py --init-from CKPT --model.dim D``: a trained network gets more capacity
    without starting over (e.g. the 32-wide CPU checkpoint, continued at 64 on a GPU).
    """
    old = model.config.dim
    if model.refine is not None:
        raise ValueError("widen a model before adding its refiner (the refiner reads the head's output, not the width)")
    if dim <= old or dim % old:
        raise ValueError(f"widen: dim must be a multiple of the current {old} and larger, got {dim}")
    f = dim // old
    config = dataclasses.replace(model.config, dim=dim)
    ref = next(model.parameters())
    new = MIEstimator(config).to(device=ref.device, dtype=ref.dtype)
    gen = torch.Generator().manual_seed(seed)
    wide = torch.arange(dim) // f  # old unit of each new unit; head h's new units copy head h's old ones

    def blocks(k):  # k stacked width-dim vectors (to_kv's [key, value], col_weights' K groups)
        return torch.cat([wide + i * old for i in range(k)])

    s = stats_dim(config)
    ffn = torch.arange(config.ffn_mult * dim) // f
    maps = {  # Linear name suffix -> (map of its outputs, map of its inputs), into the old layer's indices
        "value_embed.0": (wide, torch.arange(1)), "value_embed.2": (wide, wide),
        "col_embed.0": (wide, torch.arange(COL_FEATURES)), "col_embed.2": (wide, wide),
        "basis": (torch.arange(config.basis), torch.arange(1)), "col_weights": (blocks(config.basis), wide),
        "row_embed.0": (wide, torch.cat([blocks(3), torch.arange(KNN_FEATURES) + 3 * old])), "row_embed.2": (wide, wide),
        "head.0": (torch.arange(config.head_hidden), torch.cat([blocks(3), torch.arange(s) + 3 * old])),
        "head.2": (torch.arange(config.head_hidden), torch.arange(config.head_hidden)),
        "head.4": (torch.arange(len(config.quantile_levels)), torch.arange(config.head_hidden)),
        "to_q": (wide, wide), "to_kv": (blocks(2), wide), "out": (wide, wide),
        "ffn.0": (ffn, wide), "ffn.2": (wide, ffn),
    }
    old_mods = dict(model.named_modules())
    with torch.no_grad():
        for name, mod in new.named_modules():
            src = old_mods[name]
            if isinstance(mod, nn.Linear):
                key = next(k for k in maps if name == k or name.endswith("." + k))
                rows, cols = maps[key]
                share = torch.empty(mod.weight.shape).uniform_(0.5, 1.5, generator=gen).to(ref)
                total = share.new_zeros(rows.numel(), src.in_features).index_add_(1, cols.to(share.device), share)
                share = share / total[:, cols]  # the copies of an old input split its weight
                mod.weight.copy_(src.weight[rows][:, cols] * share)
                mod.bias.copy_(src.bias[rows])
                if key == "to_q":
                    mod.weight.mul_(f ** -0.5)
                    mod.bias.mul_(f ** -0.5)
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(src.weight[wide])
                mod.bias.copy_(src.bias[wide])
        for name, p in new.named_parameters(recurse=True):
            if name.endswith(("inducing", "seeds")):
                p.copy_(model.get_parameter(name)[:, wide])
            elif name.endswith("group_bias"):
                p.copy_(model.get_parameter(name))
    return new.train(model.training)


__all__ = ["ModelConfig", "MIEstimator", "DEFAULT_LEVELS", "INPUT_SWITCHES", "REFINE_INPUTS", "Refiner", "add_cell_layers",
           "add_column_statistics", "add_refiner", "add_row_layers", "add_nonlinear_statistics", "add_raw_statistics",
           "switch_inputs", "widen"]
