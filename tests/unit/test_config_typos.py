"""A misspelt config key is one line naming it and the key it resembles, even where the right key
is required (pydantic also reports it missing: the unknown key is what the user needs to see)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.config import parse_config
from kiln.errors import ConfigError

MODEL = {"name": "m", "source": "model.py:make"}


@pytest.mark.parametrize(
    ("data", "line"),
    [
        ({"model": {"name": "m", "sourse": "model.py:make"}}, "unknown key 'model.sourse' (did you mean 'source'?)"),
        ({"modle": MODEL}, "unknown key 'modle' (did you mean 'model'?)"),
        ({"model": MODEL, "target": [{"nmae": "eager"}]}, "unknown key 'target.0.nmae' (did you mean 'name'?)"),
        (
            {"model": MODEL, "generation": {"new_tokns": 3}},
            "unknown key 'generation.new_tokns' (did you mean 'new_tokens'?)",
        ),
        ({"model": MODEL, "zzz": 1}, "unknown key 'zzz'; fix it"),
        ({"model": {"name": "m"}}, "'model.source': Field required"),
    ],
)
def test_a_typo_names_the_key_it_resembles(data: dict[str, Any], line: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, Path())
    message = str(err.value)
    assert line in message and "\n" not in message
