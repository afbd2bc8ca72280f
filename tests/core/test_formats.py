"""sources.formats: a source's format as values, and ``converter=`` taken as a checked chain."""

from __future__ import annotations

import pytest

from ptq_core.errors import InvalidOptionError
from ptq_core.sources.formats import DENSE, FP8_BLOCK, Dequantization, SourceFormat, SourcePlan, check_converters


class _Converter:
    def process(self, tensors):
        return tensors

    def get_dependencies(self, name):
        return set()

    def update_config(self, config):
        return config


def test_check_converters_takes_none_one_or_a_list():
    one, two = _Converter(), _Converter()
    assert check_converters(None) == () and check_converters(one) == (one,)
    assert check_converters([one, two]) == (one, two) and check_converters((one,)) == (one,)


def test_an_object_without_the_converter_methods_is_refused_by_name():
    class Half:
        def process(self, tensors):
            return tensors

    with pytest.raises(InvalidOptionError, match="converter Half has no get_dependencies, update_config"):
        check_converters([_Converter(), Half()])


def test_a_plan_indexes_its_dequantizations_by_output_and_by_stored_tensor():
    steps = tuple(Dequantization(**fields) for fields in (
        {"module": "a.q", "tensor": "a.q.weight", "dependencies": ("a.q.weight_scale_inv",), "output": "a.q.weight"},
        {"module": "a.k", "tensor": "a.k.weight", "dependencies": ("a.k.weight_scale_inv",), "output": "a.k.weight"},
    ))
    plan = SourcePlan(SourceFormat(FP8_BLOCK, "FP8 blocks", block=(128, 128)), steps)
    assert plan.format.is_quantized and not SourceFormat(DENSE, "dense").is_quantized
    assert plan.by_output["a.k.weight"] is steps[1] and plan.by_tensor["a.q.weight"] == (steps[0],)
    assert plan.consumed == {"a.q.weight", "a.q.weight_scale_inv", "a.k.weight", "a.k.weight_scale_inv"}
