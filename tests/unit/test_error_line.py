"""The one way kiln quotes another library's error in its own one-line message."""

from __future__ import annotations

import warnings

from kiln.errors import error_line


def test_error_line_is_the_type_and_the_first_line_cut_at_the_limit() -> None:
    err = ValueError("bad shape " + "x" * 400 + "\nsecond line\nthird")
    assert error_line(err) == "ValueError: bad shape " + "x" * 290
    assert error_line(err, 9) == "ValueError: bad shape"


def test_error_line_skips_leading_blank_lines_and_drops_the_type_when_asked() -> None:
    assert error_line(RuntimeError("\n\n  guard failed: s0 <= 8\n  at line 3"), typed=False) == "guard failed: s0 <= 8"


def test_error_line_of_an_empty_message_is_the_type_name() -> None:
    assert error_line(AssertionError()) == "AssertionError"


def test_error_line_quotes_a_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("op X runs on the CPU\ndetails follow", UserWarning, stacklevel=1)
    assert error_line(caught[0].message, 200, typed=False) == "op X runs on the CPU"


def test_one_line_escapes_what_would_break_a_line_and_cuts_what_is_long() -> None:
    from kiln.errors import one_line

    assert one_line("a\nb\r\tc\x1b[2J\u2028d é") == "a\\nb\\r\\tc\\x1b[2J\\u2028d é"
    assert one_line("x" * 130) == "x" * 120 + "... (130 characters)"
