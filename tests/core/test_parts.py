"""``parts.Footprint``: the one verdict on whether a streamed job fits its budgets (no network)."""

from __future__ import annotations

import pytest

from dataclasses import replace

from ptq_core.errors import DiskSpaceError, MemoryBudgetError
from ptq_core.parts import Footprint

FITS = Footprint(peak_disk=300, peak_ram=2_000, disk_budget=1_000, ram_budget=4_000, largest_shard="s1",
                 largest_shard_bytes=200, largest_unit="tensor w", largest_unit_bytes=100, unit_ram=900,
                 disk_from="disk_budget")


def test_a_footprint_within_both_budgets_fits():
    assert FITS.fits and FITS.refusal() is None
    FITS.check()
    assert FITS.verdict.startswith("Fits: at most 300 B of disk (budget 1.00 KB)")


@pytest.mark.parametrize("shard", [1_000, 1_001])
def test_the_disk_verdict_is_the_largest_shard_against_the_budget(shard):
    fp = replace(FITS, largest_shard_bytes=shard)
    assert fp.fits is (shard <= 1_000)
    if shard > 1_000:
        with pytest.raises(DiskSpaceError, match=r"Output shard s1 needs 1.00 KB on local disk .* disk budget of "
                                                 r"1.00 KB \(disk_budget\)"):
            fp.check()
        assert fp.verdict == str(fp.refusal())


def test_the_ram_verdict_is_one_units_need_against_the_budget_not_the_peak():
    # the peak counts read-ahead and every worker; fewer workers make room, so only one unit's need decides
    busy = replace(FITS, peak_ram=10_000)
    assert busy.fits
    short = replace(FITS, unit_ram=4_001)
    with pytest.raises(MemoryBudgetError, match=r"The tensor w is 100 B; quantizing it needs about 4.00 KB"):
        short.check()
    assert not short.fits and "Run it on a machine with more memory" in short.verdict


def test_disk_is_judged_before_ram():
    both = replace(FITS, largest_shard_bytes=5_000, unit_ram=5_000)
    assert isinstance(both.refusal(), DiskSpaceError)
