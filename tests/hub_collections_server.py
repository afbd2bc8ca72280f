"""Hub collections on the test Hub (``tests/hub_server.py`` mounts it at ``/api/collections``).

Routes, as ``huggingface_hub`` 2.x calls them: ``POST /api/collections`` (``create_collection``;
a title the namespace already has answers 409 with its ``slug``, which ``exists_ok=True``
then reads), ``GET /api/collections/{slug}`` (``get_collection``), ``POST
/api/collections/{slug}/items`` (``add_collection_item``; an item already there answers 409).
A private collection is visible to its namespace only (404 to others, as for repos).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from datetime import datetime, timezone
from typing import Any


class CollectionsApi:
    """The collections routes and their state; ``HubServer.collections`` is one."""

    def __init__(self, error: type[Exception]) -> None:
        self._error = error  # hub_server._HubError: (status, message)
        self._lock = threading.Lock()
        self.collections: dict[str, dict[str, Any]] = {}  # slug -> the JSON the Hub answers

    def reset(self) -> None:
        with self._lock:
            self.collections.clear()

    def handle(self, method: str, parts: list[str], user: Any, body: bytes) -> tuple:
        """Route ``/api/collections/{parts...}``; returns (status, headers, payload)."""
        payload = json.loads(body or b"{}") if method == "POST" else {}
        with self._lock:
            if not parts and method == "POST":
                return self._create(user, payload)
            slug = "/".join(parts[:2])
            found = self.collections.get(slug)
            if found is None or (found["private"] and not (user and user.owns(found["owner"]["name"]))):
                raise self._error(404, "Collection not found")
            if len(parts) == 2 and method == "GET":
                return _json(found)
            if parts[2:] == ["items"] and method == "POST":
                return self._add_item(user, found, payload)
        raise self._error(404, f"Route not found: {method} /api/collections/{'/'.join(parts)}")

    def _create(self, user: Any, payload: dict) -> tuple:
        namespace, title = payload.get("namespace"), str(payload.get("title") or "").strip()
        if user is None:
            raise self._error(401, "Invalid credentials in Authorization header")
        if not user.can_write or not user.owns(namespace):
            raise self._error(403, f"You don't have the rights to create a collection in '{namespace}'")
        if not title:
            raise self._error(400, "A collection needs a title")
        same = next((c for c in self.collections.values() if c["owner"]["name"] == namespace and c["title"] == title), None)
        if same is not None:
            raise self._error(409, "A collection with this title already exists", body={"slug": same["slug"]})
        slug = f"{namespace}/{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}-{secrets.token_hex(12)}"
        self.collections[slug] = {
            "slug": slug, "title": title, "description": payload.get("description"), "private": bool(payload.get("private")),
            "owner": {"name": namespace, "type": "user"}, "items": [], "lastUpdated": _now(), "position": 0,
            "theme": "indigo", "upvotes": 0,
        }
        return _json(self.collections[slug])

    def _add_item(self, user: Any, collection: dict, payload: dict) -> tuple:
        if user is None or not user.can_write or not user.owns(collection["owner"]["name"]):
            raise self._error(403, "You don't have the rights to edit this collection")
        item = payload.get("item") or {}
        if any(i["id"] == item.get("id") and i["type"] == item.get("type") for i in collection["items"]):
            raise self._error(409, "This item is already in the collection")
        entry = {"_id": secrets.token_hex(12), "id": item.get("id"), "type": item.get("type"),
                 "position": len(collection["items"])}
        if payload.get("note"):
            entry["note"] = {"text": payload["note"]}
        collection["items"].append(entry)
        collection["lastUpdated"] = _now()
        return _json(collection)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(payload: Any) -> tuple:
    return 200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(payload).encode()
