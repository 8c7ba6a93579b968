"""Bearer-token auth: ``serving.auth.tokens_env`` names an environment variable holding
``token=role+role,token2=role`` (roles: ``predict``, ``feedback``, ``admin``; ``admin`` implies all).

Unset ``tokens_env`` = no auth. Tokens are compared with :func:`hmac.compare_digest` against every
configured token (no early exit), and never logged: errors name the role, not the token.
"""

from __future__ import annotations

import hmac
import os

from loopline.errors import ConfigError
from loopline.serving.errors import Forbidden, Unauthorized

ROLES = ("predict", "feedback", "admin")


def parse_tokens(spec: str, env_name: str) -> list[tuple[bytes, frozenset[str]]]:
    out: list[tuple[bytes, frozenset[str]]] = []
    for i, item in enumerate(p.strip() for p in spec.split(",")):
        if not item:
            continue
        token, sep, roles = item.partition("=")
        token = token.strip()
        names = frozenset(r.strip() for r in roles.split("+") if r.strip())
        if not sep or not token or not names:
            raise ConfigError(
                f"${env_name}: entry {i + 1} must look like token=role+role",
                hint=f"roles: {', '.join(ROLES)}; e.g. {env_name}='s3cr3t=predict+feedback,0ps=admin'",
            )
        bad = sorted(names - set(ROLES))
        if bad:
            raise ConfigError(
                f"${env_name}: entry {i + 1} has unknown role(s) {bad}", hint=f"roles: {', '.join(ROLES)}"
            )
        out.append((token.encode(), names))
    if not out:
        raise ConfigError(f"${env_name} is set but holds no tokens", hint="token=role+role,token2=role")
    return out


class Auth:
    def __init__(self, tokens_env: str | None) -> None:
        self.enabled = False
        self.tokens: list[tuple[bytes, frozenset[str]]] = []
        if tokens_env:
            spec = os.environ.get(tokens_env)
            if spec is None:
                raise ConfigError(
                    f"serving.auth.tokens_env is {tokens_env!r}, but that environment variable is not set",
                    hint=f"export {tokens_env}='token=predict+feedback,admintoken=admin' or remove serving.auth",
                )
            self.tokens = parse_tokens(spec, tokens_env)
            self.enabled = True

    def check(self, authorization: str | None, role: str | None) -> None:
        """Raise Unauthorized (401) without a valid token, Forbidden (403) without ``role`` (None = any role)."""
        if not self.enabled:
            return
        if not authorization:
            raise Unauthorized("missing Authorization: Bearer <token> header")
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        presented = given.strip().encode()
        roles: frozenset[str] | None = None
        for token, token_roles in self.tokens:  # compare against all, no early exit
            if hmac.compare_digest(presented, token):
                roles = token_roles
        if roles is None:
            raise Unauthorized("invalid token")
        if role is not None and role not in roles and "admin" not in roles:
            raise Forbidden(f"this token lacks the {role!r} role")
