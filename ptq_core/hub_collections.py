"""Put published repos into a Hub collection, created when missing (a release's variants side by side).

``add_to_collection("Llama-3.1 quantized", ["me/Llama-3.1-8B-FP8-BLOCK", ...])`` finds the token
user's (or ``namespace``'s) collection with that exact title, or creates it, and adds each
repo that is not in it yet. Running it again changes nothing: a rerun of a release is safe.
"""

from __future__ import annotations

from typing import Sequence

from ._http import HubHttp, check_repo_id, resolve_token
from .errors import InvalidOptionError


def add_to_collection(
    title: str,
    repo_ids: Sequence[str],
    *,
    namespace: str | None = None,
    private: bool = False,
    token: str | None = None,
) -> str:
    """Add model repos to the collection titled ``title``; returns the collection's URL.

    Args:
        title: the collection's exact title; created (``private`` or public) when the namespace has none.
        repo_ids: model repos to add, in order; those already in it are left as they are.
        namespace: a user or org; the token's user when ``None``.

    Raises:
        InvalidOptionError: an empty title or an invalid repo id, before any request.
        TokenError / HubPermissionError / HubNetworkError: as any write to the Hub.
    """
    if not isinstance(title, str) or not title.strip():
        raise InvalidOptionError(f"A collection needs a title, got {title!r}.")
    for repo_id in repo_ids:
        check_repo_id(repo_id, "target")
    http = HubHttp(resolve_token(token, required=True))
    api, where = http.api, namespace or "your namespace"
    collection = http.call(f"create the collection {title!r}", lambda: api.create_collection(
        title.strip(), namespace=namespace, private=private, exists_ok=True), role="target", repo_id=where)
    present = {(item.item_id, item.item_type) for item in collection.items}
    for repo_id in repo_ids:
        if (repo_id, "model") not in present:
            http.call(f"add {repo_id} to the collection {title!r}", lambda r=repo_id: api.add_collection_item(
                collection.slug, r, "model", exists_ok=True), role="target", repo_id=repo_id)
    return collection.url
