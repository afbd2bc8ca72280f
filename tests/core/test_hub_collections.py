"""``add_to_collection`` against the test Hub's collections routes, through the real client."""

from __future__ import annotations

import pytest
from huggingface_hub import HfApi

from ptq_core import InvalidOptionError, add_to_collection
from ptq_core.errors import HubPermissionError, TokenError

ALICE, READ_ONLY = "hf_test_alice", "hf_test_readonly"
VARIANTS = ["alice/tiny-FP8-BLOCK", "alice/tiny-NVFP4A16"]


def test_the_collection_is_created_once_and_items_are_added_once(hub):
    url = add_to_collection("Tiny, quantized", VARIANTS, token=ALICE)
    again = add_to_collection("Tiny, quantized", [VARIANTS[1], "alice/tiny-W4A16"], token=ALICE)
    assert again == url and url.startswith(f"{hub.endpoint}/collections/alice/tiny-quantized-")
    collection = HfApi(endpoint=hub.endpoint, token=ALICE).get_collection(url.split("/collections/")[1])
    assert [(i.item_id, i.item_type) for i in collection.items] == [
        (VARIANTS[0], "model"), (VARIANTS[1], "model"), ("alice/tiny-W4A16", "model")]
    assert len(hub.collections.collections) == 1
    other = add_to_collection("Tiny, other", VARIANTS[:1], token=ALICE, namespace="ptq-org", private=True)
    assert "/collections/ptq-org/tiny-other-" in other and len(hub.collections.collections) == 2


def test_refusals(hub):
    with pytest.raises(InvalidOptionError, match="needs a title"):
        add_to_collection("  ", VARIANTS, token=ALICE)
    with pytest.raises(InvalidOptionError, match="not a valid target repo id"):
        add_to_collection("T", ["not a repo"], token=ALICE)
    with pytest.raises(HubPermissionError):
        add_to_collection("T", VARIANTS, token=READ_ONLY)
    with pytest.raises(TokenError):
        add_to_collection("T", VARIANTS)
    assert hub.collections.collections == {}
