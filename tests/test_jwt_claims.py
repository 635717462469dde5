import base64
import json

import pytest
from accountpool.upstream.jwt_claims import ChatGPTIdentity, chatgpt_identity, decode_jwt_claims, token_expiry


def make_jwt(claims: dict) -> str:
    def seg(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'RS256', 'typ': 'JWT'})}.{seg(claims)}.c2lnbmF0dXJl"


def test_decode_roundtrip_without_padding():
    claims = {"sub": "user-1", "exp": 1_700_000_000, "name": "é" * 5}
    assert decode_jwt_claims(make_jwt(claims)) == claims


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "x..y",
        "eyJhbGciOi.!!!notbase64!!!.sig",
        f"h.{base64.b64encode(b'[1]').decode()}.s",
    ],
)
def test_not_a_jwt_message_never_contains_token(token):
    with pytest.raises(ValueError, match="not a JWT") as exc:
        decode_jwt_claims(token)
    if token:
        assert token not in str(exc.value)


def test_secret_payload_never_echoed():
    secret = "sk-supersecretvalue1234567890"
    with pytest.raises(ValueError) as exc:
        decode_jwt_claims(f"{secret}.{secret}.{secret}")
    assert secret not in str(exc.value)


def test_non_string_rejected():
    with pytest.raises(ValueError, match="not a JWT"):
        decode_jwt_claims(None)  # type: ignore[arg-type]


def test_token_expiry():
    assert token_expiry(make_jwt({"exp": 1_700_000_000})) == 1_700_000_000.0
    assert token_expiry(make_jwt({"exp": 17.5})) == 17.5
    assert token_expiry(make_jwt({})) is None
    assert token_expiry(make_jwt({"exp": "soon"})) is None
    assert token_expiry(make_jwt({"exp": True})) is None


def test_chatgpt_identity_full():
    token = make_jwt(
        {
            "email": "dev@example.com",
            "sub": "auth0|abc",
            "aud": ["app_EMoamEEZ73f0CkXaXp7hrann"],
            "https://api.openai.com/auth": {
                "chatgpt_plan_type": "pro",
                "chatgpt_account_id": "acct-123",
                "chatgpt_user_id": "user-xyz",
            },
        }
    )
    assert chatgpt_identity(token) == ChatGPTIdentity(
        email="dev@example.com",
        plan="pro",
        account_id="acct-123",
        user_id="user-xyz",
        client_id="app_EMoamEEZ73f0CkXaXp7hrann",
    )


def test_chatgpt_identity_defaults_and_fallbacks():
    ident = chatgpt_identity(make_jwt({"sub": "s-1", "aud": "aud-str", "client_id": "cid"}))
    assert ident.plan == "unknown"
    assert ident.account_id is None
    assert ident.email is None
    assert ident.user_id == "s-1"
    assert ident.client_id == "cid"  # explicit client_id wins over aud


def test_chatgpt_identity_odd_claim_types():
    ident = chatgpt_identity(make_jwt({"https://api.openai.com/auth": "nope", "aud": 5, "email": 3}))
    assert ident == ChatGPTIdentity(email=None, plan="unknown", account_id=None, user_id=None, client_id=None)


def test_chatgpt_identity_profile_email():
    ident = chatgpt_identity(make_jwt({"https://api.openai.com/profile": {"email": "p@example.com"}}))
    assert ident.email == "p@example.com"
