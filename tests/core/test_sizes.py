"""sizes: the one byte formatter, ratio and size parser every front end shows and reads."""

from __future__ import annotations

import pytest

from ptq_core.errors import InvalidOptionError
from ptq_core.sizes import compression_ratio, format_bytes, parse_size


@pytest.mark.parametrize("value,text", [(0, "0 B"), (999, "999 B"), (1000, "1.00 KB"), (1_234_000_000, "1.23 GB"),
                                        (16.7e12, "16.70 TB"), (999_999, "1000.00 KB")])
def test_format_bytes_uses_decimal_units_as_the_hub(value, text):
    assert format_bytes(value) == text


def test_compression_ratio():
    assert compression_ratio(200, 100) == 2.0 and compression_ratio(5, 0) == 0.0


@pytest.mark.parametrize("text,value", [("20GB", 20 * 10**9), ("512 MB", 512 * 10**6), ("1.5GiB", 3 * 2**29),
                                        ("1 KiB", 1024), ("7", 7), (" 3kb ", 3000), (42, 42), ("2TiB", 2 * 2**40)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "ten GB", "-1GB", "5 PB", "1e9", True, None, -3])
def test_parse_size_refuses_what_is_not_a_size(bad):
    with pytest.raises(InvalidOptionError, match="disk_budget="):
        parse_size(bad, name="disk_budget")


def test_a_parsed_size_formats_back_to_the_same_words():
    assert format_bytes(parse_size("20GB")) == "20.00 GB"
