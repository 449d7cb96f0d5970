"""The parity gate: every artifact against eager, with precision-aware tolerances.

Figures per output, over every parity case (seeded inputs at the min, opt and max of each dim,
plus calibration samples when given):

- ``max_abs``: the largest absolute difference;
- ``max_rel``: ``max_abs`` divided by the reference's largest magnitude (stable near zeros, unlike
  an element-wise ratio);
- ``cosine``: the smallest per-sample cosine similarity;
- ``top1``: the fraction of rows whose argmax agrees, on outputs that hold class scores only
  (:func:`is_classifier`): a hidden state's argmax over features means nothing.

Token-level outputs (``[batch, sequence, ...]``) of a model with an ``attention_mask`` input are
compared on the positions the mask keeps: a model may fill padded positions with anything. An
artifact that makes values non-finite where eager's are finite is named as such, not as a
tolerance breach.

Default tolerances are per target and precision, in the registry rows (``kiln.targets``).
A figure is gated when its tolerance is set; a breach names the output, the figure, the
tolerance, and the tolerance that would have passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kiln.config import Tolerance
from kiln.manifest import OutputFigures, ParityResult

HIGHER_IS_BETTER = {"cosine", "top1"}


@dataclass
class Figures:
    """The running figures of one output over the parity cases."""

    max_abs: float = 0.0
    max_rel: float = 0.0
    cosine: float = 1.0
    top1: float | None = None
    nonfinite: int = 0  # values the artifact made inf or nan where the reference is finite
    values: int = 0
    # The first case whose shapes differ: (the artifact's, eager's); no figure means anything then.
    shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    returned: list[str] | None = None  # set when the artifact did not return this output: the ones it did
    _agree: int = field(default=0, repr=False)
    _rows: int = field(default=0, repr=False)

    def add(self, got: np.ndarray, ref: np.ndarray, classes: bool = True, mask: np.ndarray | None = None) -> None:
        """Add one case. ``classes``: the output holds class scores on its last axis (top-1
        applies). ``mask`` ``[batch, sequence]``: only the kept token positions are compared."""
        got64, ref64 = np.asarray(got, np.float64), np.asarray(ref, np.float64)
        if got64.shape != ref64.shape:
            self.max_abs = self.max_rel = float("inf")
            self.cosine = 0.0
            self.shapes = self.shapes or (got64.shape, ref64.shape)
            return
        self.values += got64.size
        self.nonfinite += int((~np.isfinite(got64) & np.isfinite(ref64)).sum())
        keep = mask is not None and ref64.ndim >= 2 and ref64.shape[:2] == mask.shape
        rows = [(got64[i][mask[i] != 0], ref64[i][mask[i] != 0]) for i in range(ref64.shape[0])] if keep else None
        if rows is not None:
            got64 = np.concatenate([g.ravel() for g, _ in rows]) if rows else got64[:0]
            ref64 = np.concatenate([r.ravel() for _, r in rows]) if rows else ref64[:0]
        diff = np.abs(got64 - ref64)
        max_abs = float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0
        scale = float(np.abs(ref64).max()) if ref64.size else 0.0
        self.max_abs = max(self.max_abs, max_abs)
        self.max_rel = max(self.max_rel, max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf")))
        if rows is not None:
            self.cosine = min(
                [self.cosine] + [_min_cosine(g.reshape(1, -1), r.reshape(1, -1)) for g, r in rows if g.size]
            )
        else:
            self.cosine = min(self.cosine, _min_cosine(got64, ref64))
        if classes and np.issubdtype(np.asarray(ref).dtype, np.floating) and np.asarray(ref).ndim >= 2:
            width = np.asarray(ref).shape[-1]
            if width > 1:
                pairs = rows if rows is not None else [(got64, ref64)]
                for g, r in pairs:
                    a, b = g.reshape(-1, width), r.reshape(-1, width)
                    self._agree += int((a.argmax(-1) == b.argmax(-1)).sum())
                    self._rows += a.shape[0]
                self.top1 = self._agree / self._rows if self._rows else None

    def result(self) -> OutputFigures:
        return OutputFigures(max_abs=self.max_abs, max_rel=self.max_rel, cosine=self.cosine, top1=self.top1)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine similarity of each row (the first dim; a 1-D array is one row) of ``a`` with the
    same row of ``b``, in float64: the one cosine the gate, the golden set and the task metric use.
    Two all-zero rows agree perfectly, one zero row against a non-zero one does not, and a row of
    ``a`` with a non-finite value scores 0."""
    rows_a = (a.reshape(a.shape[0], -1) if a.ndim >= 2 else a.reshape(1, -1)).astype(np.float64)
    rows_b = b.reshape(rows_a.shape).astype(np.float64)
    finite = np.isfinite(rows_a).all(-1)
    rows_a = np.where(finite[:, None], rows_a, 0.0)
    dot = (rows_a * rows_b).sum(-1)
    norm = np.linalg.norm(rows_a, axis=-1) * np.linalg.norm(rows_b, axis=-1)
    same = np.abs(rows_a - rows_b).max(-1, initial=0.0) == 0
    cos = np.where(norm > 0, dot / np.where(norm > 0, norm, 1), np.where(same, 1.0, 0.0))
    return np.where(finite, np.nan_to_num(cos, nan=0.0), 0.0)


def scaled_rel(got: np.ndarray, ref: np.ndarray) -> float:
    """The largest difference of logits rows ``[rows, vocab]``, each row's scaled to its magnitude
    and its vocabulary: ``max |got - ref| / (rms(ref) * sqrt(2 ln vocab))``, over the worst row.

    A float32 rounding error on a logit is proportional to the hidden state the logit was read
    from, as is the row's rms over the vocabulary, so their ratio is the hidden state's relative
    error whatever the model's width; and the largest of V such errors is about ``sqrt(2 ln V)``
    of them (3.4 at a vocabulary of 384, 4.6 at 49 k). A weight or cache that is wrong moves the
    logits by far more than rounding does. 0 where the rows are identical; inf where a value is not
    finite, or a row of ``ref`` is all zeros and the rows differ."""
    got64, ref64 = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if not ref64.size:
        return 0.0
    width = ref64.shape[-1]
    rows_got, rows_ref = got64.reshape(-1, width), ref64.reshape(-1, width)
    diff = np.abs(rows_got - rows_ref)
    diff = np.where(np.isnan(diff), np.inf, diff).max(-1)
    scale = np.sqrt((rows_ref**2).mean(-1) * 2 * np.log(max(width, 2)))
    ratio = np.where(diff == 0, 0.0, np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), np.inf))
    return float(ratio.max())


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    cos = row_cosines(a, b)
    return float(cos.min()) if cos.size else 1.0


MASK_INPUT = "attention_mask"


def is_classifier(name: str, value: np.ndarray, primary: str | None, marked: tuple[str, ...] = ()) -> bool:
    """Whether top-1 agreement means something for an output: class scores on its last axis.
    Outputs named ``*logits`` and outputs marked in the config are; so is the primary output when
    it is one row of scores per sample (``[batch, classes]``). A hidden state (``[batch, sequence,
    features]``) is not: its argmax over features means nothing."""
    if name in marked or name.endswith("logits"):
        return True
    return (primary is None or name == primary) and np.asarray(value).ndim == 2


@dataclass
class ParityReport:
    tolerance: Tolerance
    # The output the task reads; top-1 applies to it when it is ``[batch, classes]``, and to
    # every output named ``*logits`` or listed in ``classifiers`` (see :func:`is_classifier`).
    primary: str | None = None
    outputs: dict[str, Figures] = field(default_factory=dict)
    cases: int = 0
    classifiers: tuple[str, ...] = ()
    _top1: dict[str, bool] = field(default_factory=dict, repr=False)

    def add_case(
        self, got: dict[str, np.ndarray], ref: dict[str, np.ndarray], inputs: dict[str, np.ndarray] | None = None
    ) -> None:
        """Add one case; with ``inputs``, token-level outputs are compared where their
        ``attention_mask`` keeps positions (padding may hold anything)."""
        self.cases += 1
        mask = inputs.get(MASK_INPUT) if inputs is not None else None
        for name, value in ref.items():
            figures = self.outputs.setdefault(name, Figures())
            if name not in got:
                figures.max_abs = figures.max_rel = float("inf")
                figures.cosine = 0.0
                figures.returned = sorted(got)
                continue
            classes = self._top1.setdefault(name, is_classifier(name, value, self.primary, self.classifiers))
            figures.add(got[name], value, classes=classes, mask=mask)

    def breaches(self) -> list[str]:
        found = []
        for name, figures in self.outputs.items():
            if figures.returned is not None:
                found.append(
                    f"output {name!r}: the artifact does not return it (it returns {figures.returned}); "
                    "rebuild it, or try another target"
                )
                continue
            if figures.shapes is not None:
                got, ref = (list(shape) for shape in figures.shapes)
                found.append(
                    f"output {name!r}: the artifact returned shape {got} where eager returns {ref}: it does not "
                    "follow the input's dims; check [model].dims, or try another target or precision"
                )
                continue  # no tolerance compares arrays of two shapes
            if figures.nonfinite:
                found.append(
                    f"output {name!r}: the artifact produced {figures.nonfinite} non-finite values (inf or nan) "
                    f"of {figures.values} where eager's are finite: the runtime fails on an operator of this "
                    "model; try another target or precision"
                )
                continue  # every other figure of this output is meaningless now
            for figure, limit in self._limits(name):
                value = getattr(figures, figure)
                if value is None or limit is None:
                    continue
                # A suggested tolerance only where one could honestly pass (never inf or nan).
                if figure in HIGHER_IS_BETTER and value < limit:
                    hint = f" (min_{figure} = {_floor(value):.6g} would pass)" if np.isfinite(value) else ""
                    found.append(f"output {name!r}: {figure} {value:.6g} < tolerance {limit:.6g}{hint}")
                elif figure not in HIGHER_IS_BETTER and not value <= limit:
                    hint = (
                        f" ({figure} = {_ceil(value):.3g} would pass)"
                        if np.isfinite(value)
                        else " (the outputs differ in shape or hold nan: no tolerance passes)"
                    )
                    found.append(f"output {name!r}: {figure} {value:.3g} > tolerance {limit:.3g}{hint}")
        return found

    def _limits(self, output: str) -> list[tuple[str, float | None]]:
        t = self.tolerance
        top1 = t.min_top1 if self._top1.get(output, False) else None
        return [("max_abs", t.max_abs), ("max_rel", t.max_rel), ("cosine", t.min_cosine), ("top1", top1)]

    @property
    def passed(self) -> bool:
        return not self.breaches()

    def worst(self) -> str:
        """The one figure a summary table shows: the gated figure closest to (or past) its limit."""
        best: tuple[float, str] | None = None
        for name, figures in self.outputs.items():
            for figure, limit in self._limits(name):
                value = getattr(figures, figure)
                if value is None or limit is None:
                    continue
                ratio = (1 - value) / max(1 - limit, 1e-12) if figure in HIGHER_IS_BETTER else value / max(limit, 1e-30)
                if best is None or ratio > best[0]:
                    best = (ratio, f"{figure} {value:.3g}" + (f" ({name})" if len(self.outputs) > 1 else ""))
        if best is None:
            return "-"
        return "exact" if best[0] < 1e-6 else best[1]  # float rounding of a perfect cosine

    def result(self, inputs: str = "seeded + calibration") -> ParityResult:
        return ParityResult(
            passed=self.passed,
            cases=self.cases,
            tolerance=self.tolerance,
            outputs={k: v.result() for k, v in self.outputs.items()},
            breaches=self.breaches(),
            worst=self.worst(),
            inputs=inputs,
        )


def _ceil(value: float) -> float:
    """A round tolerance just above ``value``."""
    if not np.isfinite(value) or value <= 0:
        return value
    exp = np.floor(np.log10(value))
    return float(np.ceil(value / 10**exp * 10) / 10 * 10**exp)


def _floor(value: float) -> float:
    return float(np.floor(value * 1e4) / 1e4)
