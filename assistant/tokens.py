"""Signed per-interaction feedback tokens: a browser may post feedback on the one answer it was
given, for the user it was given to, until the token expires, without holding an API key.

A token is `<payload>.<signature>`, both base64url: the payload is the JSON `{"i": interaction id,
"u": user id, "e": expiry (unix seconds)}` and the signature its HMAC-SHA256 under the server's
secret, compared in constant time. Nothing in it is secret; it only cannot be forged or altered.

    tokens = FeedbackTokens(b"secret", ttl_s=3600)
    token = tokens.issue("i-1", "u-42")
    tokens.verify(token)            # -> Claims("i-1", "u-42", expires_at)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from core.errors import RlhfError

MAX_TOKEN_CHARS = 1024  # an issued token has at most ~440 (two 128-character ids, an expiry, a signature)


class TokenError(RlhfError):
    """A feedback token that cannot be accepted: malformed, forged, or expired."""


@dataclass(frozen=True)
class Claims:
    interaction_id: str
    user_id: str
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FeedbackTokens:
    def __init__(self, secret: bytes, ttl_s: float):
        self._secret = secret
        self.ttl_s = ttl_s

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, interaction_id: str, user_id: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl_s)
        payload = _b64(json.dumps({"i": interaction_id, "u": user_id, "e": expires}, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str, now: float | None = None) -> Claims:
        """The token's claims; TokenError saying why it is refused."""
        payload, _, signature = token.partition(".")
        # A token is base64url text: anything else (non-ASCII, which the comparison below cannot take) is malformed.
        if not payload or not signature or not token.isascii() or len(token) > MAX_TOKEN_CHARS:
            raise TokenError("feedback token is malformed (expected <payload>.<signature>, base64url)")
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise TokenError("feedback token signature does not match (forged, altered, or signed by another server secret)")
        try:
            body = json.loads(_unb64(payload))
            claims = Claims(str(body["i"]), str(body["u"]), float(body["e"]))
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise TokenError("feedback token payload is unreadable") from None
        if (time.time() if now is None else now) >= claims.expires_at:
            raise TokenError(f"feedback token for interaction {claims.interaction_id} has expired")
        return claims
