"""The Hub token behind the Space's "Sign in with Hugging Face" button.

On a Space the token is the user's OAuth token. Outside one, Gradio mocks the sign-in and hands
handlers a placeholder; ``token_from`` swaps it for ``HF_TOKEN`` or the cached login, so every
Hub call of a local run uses a real token.
"""

from __future__ import annotations

import gradio as gr
from gradio.utils import get_space

# gradio/oauth.py `_get_mocked_oauth_info`: the access token handed to handlers when
# the sign-in is mocked (run outside a Space). It is not a Hub token.
_MOCK_OAUTH_TOKEN = "mock-oauth-token-for-local-dev"


def token_from(oauth_token: gr.OAuthToken | None) -> str | None:
    """The Hub token of the signed-in user; ``HF_TOKEN`` stands in for Gradio's local mock."""
    if oauth_token is None or not oauth_token.token:
        return None
    if oauth_token.token == _MOCK_OAUTH_TOKEN and get_space() is None:
        return local_token()
    return oauth_token.token


def local_token() -> str | None:
    """The token Gradio's local sign-in mock stands for: ``HF_TOKEN``, then the cached login."""
    from ptq_core._http import resolve_token

    return resolve_token(None, required=False)
