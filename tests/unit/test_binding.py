"""Inputs bind to ``forward`` by name when the spec's names are its parameters (issue 12.1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kiln.capture.sources import bind_inputs
from kiln.errors import SourceError


class Optional(torch.nn.Module):
    """transformers' shape: optional parameters between the ones a spec gives."""

    def forward(self, input_ids, past_key_values=None, attention_mask=None):
        assert past_key_values is None, "attention_mask must not land in past_key_values"
        return input_ids * 2 + attention_mask


class Reordered(torch.nn.Module):
    def forward(self, a, b):
        return a - b


class Plain(torch.nn.Module):
    def forward(self, x):
        return x + 1


class NeedsScale(torch.nn.Module):
    def forward(self, x, *, scale):
        return x * scale


class NeedsTwo(torch.nn.Module):
    def forward(self, x, y):
        return x + y


def test_names_that_are_parameters_bind_by_keyword() -> None:
    ids, mask = torch.tensor([[1, 2]]), torch.tensor([[1, 0]])
    bound = bind_inputs(Optional(), ["input_ids", "attention_mask"], "m")
    assert torch.equal(bound(ids, mask), ids * 2 + mask)
    # The spec's order is kiln's call order, whatever forward's order is.
    assert torch.equal(bind_inputs(Reordered(), ["b", "a"], "m")(torch.tensor(1), torch.tensor(5)), torch.tensor(4))


def test_a_keyword_bound_module_captures_with_dynamic_dims_by_name() -> None:
    from kiln.capture.exporters.torch_export import capture
    from kiln.config import DimSpec, InputSpec
    from kiln.spec import Signature

    sig = Signature(
        (
            InputSpec(name="input_ids", shape=["batch", "seq"], dtype="int64"),
            InputSpec(name="attention_mask", shape=["batch", "seq"], dtype="int64"),
        ),
        {"batch": DimSpec(min=1, max=4), "seq": DimSpec(min=2, max=16)},
    )
    bound = bind_inputs(Optional(), sig.input_names, "m")
    program = capture(bound, (torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int64)), sig, False)
    out = program.module()(torch.ones(3, 5, dtype=torch.int64), torch.zeros(3, 5, dtype=torch.int64))
    assert out.shape == (3, 5)


def test_positional_models_stay_positional() -> None:
    module = Plain()
    assert bind_inputs(module, ["pixels"], "m") is module  # names need not match parameters


@pytest.mark.parametrize(
    ("module", "names", "missing"),
    [(NeedsScale(), ["x"], "scale"), (NeedsTwo(), ["x"], "y"), (NeedsTwo(), ["p"], "y")],
)
def test_a_parameter_the_spec_does_not_give_is_named(module: torch.nn.Module, names: list[str], missing: str) -> None:
    with pytest.raises(SourceError, match=f"needs the parameter '{missing}'"):
        bind_inputs(module, names, "m")


def test_a_transformers_encoder_from_a_factory_builds_with_a_mask(tmp_path: Path) -> None:
    """The issue's case: GPT2Model with input_ids and attention_mask from a file.py:fn factory."""
    from kiln.capture.sources import load_source
    from kiln.config import parse_config

    (tmp_path / "m.py").write_text(
        "import torch, transformers\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return transformers.GPT2Model(transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2))\n"
    )
    spec = {"shape": ["batch", "sequence"], "dtype": "int64", "range": [0, 49]}
    config = parse_config(
        {
            "model": {
                "name": "g",
                "source": "m.py:build",
                "inputs": [{"name": "input_ids", **spec}, {"name": "attention_mask", **spec, "range": [1, 1]}],
                "dims": {"batch": {"min": 1, "max": 2}, "sequence": {"min": 2, "max": 8}},
            }
        },
        tmp_path,
    )
    loaded = load_source(config.model, tmp_path)
    ids = torch.randint(0, 50, (2, 4))
    out = loaded.module(ids, torch.ones(2, 4, dtype=torch.int64))
    assert out.last_hidden_state.shape == (2, 4, 16)
    assert out.past_key_values is None  # no cache object among a fixed graph's outputs
