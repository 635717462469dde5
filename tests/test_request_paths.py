"""Path checks that keep an account's credential on the pooled API (issue 12 §3). Pure."""

from __future__ import annotations

import pytest
from accountpool.models import Account, AccountKind
from accountpool.upstream.request_paths import PathVerdict, check_path, has_dot_segment
from accountpool.upstream.upstream_request import upstream_url


@pytest.mark.parametrize(("target", "verdict", "forwarded"), [
    ("/v1/responses", PathVerdict.POOLED, "/v1/responses"),
    ("/v1/models?limit=5", PathVerdict.POOLED, "/v1/models?limit=5"),
    ("/v1", PathVerdict.UNKNOWN, None),  # no account kind serves the bare prefix
    ("/v1/", PathVerdict.POOLED, "/v1/"),
    ("/backend-api/codex/responses", PathVerdict.POOLED, "/backend-api/codex/responses"),
    # Dot segments that stay inside are resolved, and the resolved path is what travels.
    ("/v1/models/../responses", PathVerdict.POOLED, "/v1/responses"),
    ("/v1/./responses", PathVerdict.POOLED, "/v1/responses"),
    ("/v1//responses", PathVerdict.POOLED, "/v1/responses"),
    ("/v1/x/%2e%2e/responses?a=%2e", PathVerdict.POOLED, "/v1/responses?a=%2e"),  # the query is not a path
    # Leaving the pooled prefix, in every spelling.
    ("/v1/../../etc/passwd", PathVerdict.ESCAPES, None),
    ("/v1/../etc/passwd", PathVerdict.ESCAPES, None),
    ("/v1/%2e%2e/%2e%2e/etc/passwd", PathVerdict.ESCAPES, None),
    ("/v1/%2E%2E/admin", PathVerdict.ESCAPES, None),
    ("/v1/%252e%252e/admin", PathVerdict.ESCAPES, None),  # double encoding
    ("/v1%2f..%2fadmin", PathVerdict.ESCAPES, None),
    ("/v1/..%5cadmin", PathVerdict.ESCAPES, None),
    ("/v1\\..\\admin", PathVerdict.ESCAPES, None),
    ("/backend-api/codex/../../accounts", PathVerdict.ESCAPES, None),
    ("/backend-api/codex/../wham/usage", PathVerdict.ESCAPES, None),
    ("/..", PathVerdict.ESCAPES, None),
    # Out of the prefix it started in and into the other one: still out (an API path must not reach
    # the Codex backend, nor a Codex path the API), and so is leaving and coming back.
    ("/v1/../backend-api/codex/responses", PathVerdict.ESCAPES, None),
    ("/v1/%2e%2e/backend-api/codex/responses", PathVerdict.ESCAPES, None),
    ("/backend-api/codex/../../v1/responses", PathVerdict.ESCAPES, None),
    ("/backend-api/codex/%2e%2e%2f%2e%2e%2fv1/responses", PathVerdict.ESCAPES, None),
    ("/v1/../v1/responses", PathVerdict.ESCAPES, None),
    ("/v1/a/../../v1/responses", PathVerdict.ESCAPES, None),
    ("/backend-api/codex/../codex/responses", PathVerdict.ESCAPES, None),
    # Inside the prefix it started in, however deep the detour.
    ("/v1/a/../responses", PathVerdict.POOLED, "/v1/responses"),
    ("/v1/a/b/../../responses", PathVerdict.POOLED, "/v1/responses"),
    ("/backend-api/codex/a/../responses", PathVerdict.POOLED, "/backend-api/codex/responses"),
    # Not an API path and no traversal: unknown (404 in reverse mode).
    ("/", PathVerdict.UNKNOWN, None),
    ("/etc/passwd", PathVerdict.UNKNOWN, None),
    ("/v2/responses", PathVerdict.UNKNOWN, None),
    ("/backend-api/wham/usage", PathVerdict.UNKNOWN, None),
    ("/v1responses", PathVerdict.UNKNOWN, None),
])
def test_check_path(target, verdict, forwarded):
    checked = check_path(target)
    assert checked.verdict is verdict, checked
    if forwarded is not None:
        assert checked.path == forwarded


def test_a_gateway_prefix_is_never_escaped():
    """The base URL's own path (`/openai/v1`) stays the prefix of every URL built from a checked path."""
    account = Account(id="a", label="gw", kind=AccountKind.API_KEY, base_url="https://gw.example/openai/v1")
    for target in ("/v1/responses", "/v1/models/../files", "/v1/%2e/x"):
        checked = check_path(target)
        assert checked.verdict is PathVerdict.POOLED
        assert upstream_url(account, checked.path, chatgpt_base="https://c.example/backend-api/codex") \
            .startswith("https://gw.example/openai/v1/")
    with pytest.raises(ValueError, match="dot segment"):
        upstream_url(account, "/v1/../../admin", chatgpt_base="https://c.example/backend-api/codex")
    login = Account(id="b", label="login", kind=AccountKind.CHATGPT)
    with pytest.raises(ValueError, match="dot segment"):
        upstream_url(login, "/backend-api/codex/%2e%2e/x", chatgpt_base="https://c.example/backend-api/codex")


def test_has_dot_segment():
    assert has_dot_segment("/v1/../x") and has_dot_segment("/v1/%2E%2e/x") and has_dot_segment("/v1/./x")
    assert not has_dot_segment("/v1/responses?x=..") and not has_dot_segment("/v1/a..b")
