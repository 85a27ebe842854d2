"""Who may connect: loopback by default; any other address only with an explicit flag and an access token.

trame has no authentication of its own and every connected browser drives the same scene, so a server
reachable from the network must check a secret on every request: the page, its assets and the websocket.
The token arrives once in the address (``?token=...``); the server answers with an HTTP-only cookie that
the browser sends with every later request, the websocket upgrade included.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

from ..errors import InputError

TOKEN_COOKIE = "layer_ensembles_token"
TOKEN_QUERY = "token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_token(host: str, allow_remote: bool, token: str | None) -> str | None:
    """The token every connection must present, or None on loopback without one; InputError when unsafe."""
    if not is_loopback(host):
        if not allow_remote:
            raise InputError(
                f"--host {host}: not a loopback address; serving a review to the network needs "
                "--allow-remote (and an access token, printed once)"
            )
        token = token or secrets.token_urlsafe(24)
    if token is not None and len(token) < 16:
        raise InputError("--token: use at least 16 characters")
    return token


def token_accepted(expected: str, query_token: str | None, cookie_token: str | None) -> bool:
    return any(
        candidate is not None and hmac.compare_digest(candidate.encode(), expected.encode())
        for candidate in (query_token, cookie_token)
    )


def token_middleware(expected: str):
    """An aiohttp middleware refusing (403) every request that carries neither the token nor its cookie."""
    from aiohttp import web

    @web.middleware
    async def check_token(request, handler):
        query_token = request.query.get(TOKEN_QUERY)
        if not token_accepted(expected, query_token, request.cookies.get(TOKEN_COOKIE)):
            return web.Response(status=403, text="LayerEnsembles review: access token missing or wrong\n")
        response = await handler(request)
        if query_token is not None and not getattr(response, "prepared", False):
            response.set_cookie(TOKEN_COOKIE, expected, httponly=True, samesite="Strict")
        return response

    return check_token
