"""Fine-tuning with ``[recovery]``: after pruning, to distil a teacher into the model being built,
and for quantization-aware training (fake quantization in the loop); optionally distilled from a
teacher (the unpruned or float model, or ``[recovery].teacher``).

``[recovery].source`` is a callable yielding ``(inputs, target)`` training batches (inputs as for
evaluation: a dict by input name, a tuple or one array); it is called again for every epoch, so
it may shuffle. The loss reads the model's first output: cross-entropy for integer targets, mean
squared error for float targets. With ``distill = true`` the unpruned model is the teacher:
``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task loss`` for
classification (Hinton et al., 2015), and ``alpha * MSE(student, teacher) + (1 - alpha) * task
loss`` for regression outputs. A rich progress bar shows the epoch and the running loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kiln.callables import load_callable
from kiln.config import RecoveryConfig
from kiln.data import as_array, as_inputs
from kiln.errors import DataError
from kiln.spec import Signature

Progress = Callable[[str], None]
Mode = Callable[[Any], Any]


def first_output(out: Any) -> Any:
    """The model's first output tensor (the one losses and distillation read)."""
    from kiln.tensors import flatten_outputs

    _, values = flatten_outputs(out)
    return values[0]


def _train(module: Any) -> Any:
    return module.train()


def _eval(module: Any) -> Any:
    return module.eval()


class Recovery:
    """Fine-tunes a module on the recovery data (distilled from ``teacher`` when given); one
    instance per pruning, distillation or quantization-aware training run."""

    def __init__(
        self, config: RecoveryConfig, sig: Signature, root: Path, teacher: Any, progress: Progress = lambda _: None
    ) -> None:
        self.config, self.sig, self.progress = config, sig, progress
        self.teacher = teacher.eval() if config.distill else None
        self.source = load_callable(config.source, root, "recovery source")
        self.epochs_run = 0

    def batches(self) -> Iterator[tuple[tuple[Any, ...], Any]]:
        """(positional input tensors, target tensor) for one epoch."""
        import torch

        from kiln.tensors import to_tensors

        try:
            items = iter(self.source())
        except Exception as err:
            raise DataError(f"recovery source {self.config.source!r} raised {type(err).__name__}: {err}") from err
        count = 0
        while True:
            try:
                item = next(items, None)
            except Exception as err:  # a user's generator failing part-way
                raise DataError(
                    f"recovery source {self.config.source!r} failed at batch {count}: {type(err).__name__}: {err}"
                ) from err
            if item is None:
                break
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise DataError(
                    f"recovery source {self.config.source!r}: batch {count} is not an (inputs, target) pair; "
                    "yield (inputs, target) training batches"
                )
            arrays = as_inputs(self.sig, item[0], f"recovery batch {count}")
            yield tuple(to_tensors(self.sig, arrays)), torch.from_numpy(as_array(item[1]).copy())
            count += 1
        if count == 0:
            raise DataError(
                f"recovery source {self.config.source!r} yielded no batches; it must yield (inputs, target) pairs"
            )

    def loss(self, student: Any, target: Any, args: tuple[Any, ...]) -> Any:
        import torch
        from torch.nn import functional as F

        classify = not target.is_floating_point()
        task = F.cross_entropy(student, target.long()) if classify else F.mse_loss(student, target.to(student.dtype))
        if self.teacher is None:
            return task
        with torch.no_grad():
            teacher = first_output(self.teacher(*args)).float()
        alpha, temp = self.config.alpha, self.config.temperature
        if classify:
            distill = F.kl_div(
                F.log_softmax(student / temp, dim=-1),
                F.log_softmax(teacher / temp, dim=-1),
                reduction="batchmean",
                log_target=True,
            ) * (temp * temp)
        else:
            distill = F.mse_loss(student, teacher)
        return alpha * distill + (1 - alpha) * task

    def fit(
        self,
        module: Any,
        epochs: int | None = None,
        label: str = "recovery",
        modes: tuple[Mode, Mode] = (_train, _eval),
    ) -> dict[str, Any]:
        """Train ``module`` in place for ``epochs`` (the config's by default); returns the figures.
        ``modes`` switch it to training and back (an exported graph has its own functions)."""
        import torch
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        epochs = epochs or self.config.epochs
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.config.lr)
        torch.manual_seed(0)  # dropout and any other randomness in training mode
        losses: list[float] = []
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epochs · loss {task.fields[loss]}"),
            TimeElapsedColumn(),
        )
        modes[0](module)
        with (
            torch.enable_grad(),
            Progress(*columns, console=Console(stderr=True), transient=True) as bar,
        ):
            task = bar.add_task(label, total=epochs, loss="-")
            for epoch in range(epochs):
                total, seen = 0.0, 0
                for args, target in self.batches():
                    opt.zero_grad(set_to_none=True)
                    loss = self.loss(first_output(module(*args)).float(), target, args)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise DataError(f"{label}: the loss became {value} at epoch {epoch + 1}; lower [recovery].lr")
                    loss.backward()
                    opt.step()
                    total, seen = total + value * len(target), seen + len(target)
                    bar.update(task, loss=f"{total / seen:.4f}")
                losses.append(total / seen)
                bar.advance(task)
                self.progress(f"{label}: epoch {epoch + 1}/{epochs}, loss {losses[-1]:.4f}")
        modes[1](module)
        self.epochs_run += epochs
        return {"epochs": epochs, "loss_first": round(losses[0], 6), "loss_final": round(losses[-1], 6)}
