"""An independent OAuth 2.0 authorization server with Salesforce's paths, for interop tests.

Built on Authlib so that the protocol checks are Authlib's, not ours:

* PKCE: ``authlib.oauth2.rfc7636.CodeChallenge(required=True)``, S256 only (and, like
  Salesforce with "Require PKCE", an authorization request must carry a challenge).
* Client authentication at the token and introspection endpoints: ``client_secret_post``
  only (the grants' ``TOKEN_ENDPOINT_AUTH_METHODS``, the endpoints' ``CLIENT_AUTH_METHODS``
  and the client's ``check_endpoint_auth_method``): HTTP Basic gets ``invalid_client``.
* Authorization codes: single use (Authlib deletes the code after the exchange),
  redirect_uri bound to the code and compared by Authlib at the token endpoint.
* Refresh-token rotation: Authlib's ``RefreshTokenGrant`` with
  ``INCLUDE_NEW_REFRESH_TOKEN = True``; the old refresh token is revoked in
  ``revoke_old_credential`` so presenting it again fails with ``invalid_grant``. Like
  Salesforce, presenting a rotated-out refresh token also revokes the whole token family.
* Revocation (RFC 7009) at ``/services/oauth2/revoke`` accepts Salesforce's
  unauthenticated form (``token`` only): Authlib's ``RevocationEndpoint`` with a registered
  client-authentication method ``salesforce_token`` that identifies the client from the
  token being revoked (the client never presents credentials there).
* Introspection (RFC 7662): Authlib's ``IntrospectionEndpoint`` with client_secret_post.

Salesforce's token-response fields are added by the token generator: ``instance_url`` (this
server's base URL), ``id`` (``{base}/id/{orgId}/{userId}``, 18-character ids), ``issued_at``
(ms since the epoch, as a string) and ``signature`` (base64 HMAC-SHA256 with the client
secret over ``id + issued_at``); there is no ``expires_in``.

Usage::

    python server.py --client-id ID --client-secret SECRET --redirect-uri URI [--port 0]

Prints ``LISTENING http://127.0.0.1:PORT`` once it accepts connections. Exits when its
standard input reaches end-of-file (so it dies with the test that started it).
``GET /debug/counters`` answers what happened so far.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import logging
import os
import secrets
import sys
import threading
import time
import uuid

from authlib.integrations.flask_oauth2 import AuthorizationServer, client_authenticated
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    InvalidRequestError,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

# Salesforce's scopes (a subset is enough: the service asks for api refresh_token
# offline_access).
SCOPES = [
    "api",
    "refresh_token",
    "offline_access",
    "id",
    "profile",
    "email",
    "address",
    "phone",
    "openid",
    "web",
    "full",
    "chatter_api",
    "visualforce",
    "custom_permissions",
]

ACCESS_TOKEN_LIFETIME_SECS = 7200  # Salesforce's default session timeout (2 hours).
AUTHORIZATION_CODE_LIFETIME_SECS = 900  # Salesforce: about 15 minutes.

ORG_ID_15 = "00D5g000004XyZa"
USER_ID_15 = "0055g00000AbCdE"

_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def to_18(id15: str) -> str:
    """Salesforce's case-safe 18-character form of a 15-character id."""
    suffix = ""
    for start in range(0, 15, 5):
        bits = 0
        for i, ch in enumerate(id15[start : start + 5]):
            if "A" <= ch <= "Z":
                bits |= 1 << i
        suffix += _SUFFIX_ALPHABET[bits]
    return id15 + suffix


# --------------------------------------------------------------------------------------
# In-memory models (Authlib's mixins)
# --------------------------------------------------------------------------------------


class User:
    def __init__(self, org_id: str, user_id: str, username: str):
        self.org_id = org_id
        self.user_id = user_id
        self.username = username


class Client(ClientMixin):
    def __init__(self, client_id: str, client_secret: str, redirect_uri: str):
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uri

    def get_allowed_scope(self, scope):
        if not scope:
            return "api refresh_token"
        allowed = set(SCOPES)
        return " ".join(s for s in scope_to_list(scope) if s in allowed)

    def check_redirect_uri(self, redirect_uri):
        # Salesforce: the redirect_uri must equal the app's callback exactly.
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret):
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method, endpoint):
        if endpoint in ("token", "introspection"):
            return method == "client_secret_post"
        if endpoint == "revocation":
            return method == SALESFORCE_TOKEN_AUTH
        return False

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


class AuthorizationCode(AuthorizationCodeMixin):
    def __init__(self, code, client_id, redirect_uri, scope, user, challenge, method):
        self.code = code
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.scope = scope
        self.user = user
        self.code_challenge = challenge
        self.code_challenge_method = method
        self.auth_time = time.time()

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def is_expired(self):
        return time.time() > self.auth_time + AUTHORIZATION_CODE_LIFETIME_SECS


class Token(TokenMixin):
    def __init__(self, client, user, family, data):
        self.client = client
        self.user = user
        self.family = family
        self.access_token = data["access_token"]
        self.refresh_token = data.get("refresh_token")
        self.scope = data.get("scope", "")
        self.issued_at = int(time.time())
        self.expires_in = ACCESS_TOKEN_LIFETIME_SECS
        self.access_token_revoked = False
        self.refresh_token_revoked = False
        # Why the refresh token was revoked: "rotated" (superseded by a refresh) or
        # "revoked" (RFC 7009, reuse detection).
        self.refresh_revoked_reason = None

    def check_client(self, client):
        return client is not None and client.client_id == self.client.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self):
        return self.access_token_revoked

    def get_user(self):
        return self.user

    def get_client(self):
        return self.client


class Store:
    """Everything the server knows, guarded by one lock (the dev server is threaded)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.tokens: list[Token] = []
        self.counters = {
            "authorizations": 0,
            "token_requests": 0,
            "code_exchanges": 0,
            "refreshes": 0,
            "refresh_failures": 0,
            "revocations": 0,
            "revocation_requests": 0,
            "introspections": 0,
            "authorization_headers": 0,
            "last_client_auth_method": None,
        }

    def by_access_token(self, value):
        return next((t for t in self.tokens if t.access_token == value), None)

    def by_refresh_token(self, value):
        return next((t for t in self.tokens if t.refresh_token == value), None)

    def revoke_family(self, family):
        for t in self.tokens:
            if t.family == family:
                t.access_token_revoked = True
                if not t.refresh_token_revoked:
                    t.refresh_token_revoked = True
                    t.refresh_revoked_reason = "revoked"


STORE = Store()
SALESFORCE_TOKEN_AUTH = "salesforce_token"


# --------------------------------------------------------------------------------------
# Grants and endpoints (Authlib does the checking)
# --------------------------------------------------------------------------------------


class S256CodeChallenge(CodeChallenge):
    """Authlib's PKCE extension, S256 only; a challenge is required at authorization."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            # Salesforce with "Require PKCE": invalid_request "missing required code challenge".
            raise InvalidRequestError("missing required code challenge")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("Unsupported 'code_challenge_method'")
        super().validate_code_challenge(grant, redirect_uri)


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_post"]

    def generate_authorization_code(self):
        # Salesforce codes end in "=" padding and so arrive percent-encoded (%3D) on the
        # callback: the client must decode exactly once and form-encode once.
        return "aPrx" + secrets.token_urlsafe(36).replace("-", ".").replace("_", ".") + "=="

    def save_authorization_code(self, code, request):
        data = request.payload.data
        with STORE.lock:
            STORE.codes[code] = AuthorizationCode(
                code=code,
                client_id=request.client.client_id,
                redirect_uri=request.payload.redirect_uri,
                scope=request.scope,
                user=request.user,
                challenge=data.get("code_challenge"),
                method=data.get("code_challenge_method"),
            )

    def query_authorization_code(self, code, client):
        with STORE.lock:
            item = STORE.codes.get(code)
        if item and item.client_id == client.client_id and not item.is_expired():
            return item
        return None

    def delete_authorization_code(self, authorization_code):
        with STORE.lock:
            STORE.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code):
        return authorization_code.user


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_post"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token):
        with STORE.lock:
            token = STORE.by_refresh_token(refresh_token)
            if token is None:
                return None
            if token.refresh_token_revoked:
                if token.refresh_revoked_reason == "rotated":
                    # Salesforce "Refresh Token Rotation": reuse of a rotated-out refresh
                    # token revokes the current one and all its access tokens.
                    STORE.revoke_family(token.family)
                return None
            return token

    def authenticate_user(self, refresh_token):
        return refresh_token.user

    def revoke_old_credential(self, refresh_token):
        with STORE.lock:
            refresh_token.refresh_token_revoked = True
            refresh_token.refresh_revoked_reason = "rotated"


def authenticate_by_token(query_client, request):
    """Client authentication for Salesforce's revoke endpoint, which takes ``token`` only:
    the client is the one the presented token was issued to."""
    value = request.form.get("token")
    if not value:
        return None
    with STORE.lock:
        token = STORE.by_refresh_token(value) or STORE.by_access_token(value)
    if token is None:
        return None
    return query_client(token.client.client_id)


class SalesforceRevocationEndpoint(RevocationEndpoint):
    CLIENT_AUTH_METHODS = [SALESFORCE_TOKEN_AUTH]

    def create_endpoint_response(self, request):
        with STORE.lock:
            STORE.counters["revocation_requests"] += 1
        value = request.form.get("token")
        with STORE.lock:
            by_refresh = STORE.by_refresh_token(value) if value else None
            by_access = STORE.by_access_token(value) if value else None
            known = (by_refresh is not None and not by_refresh.refresh_token_revoked) or (
                by_access is not None and not by_access.access_token_revoked
            )
        if not known:
            # Salesforce answers 400 invalid_token for an unknown token (RFC 7009 would
            # answer 200; the service accepts both).
            raise OAuth2Error(description="invalid token", status_code=400, error="invalid_token")
        return super().create_endpoint_response(request)

    def query_token(self, token_string, token_type_hint):
        with STORE.lock:
            if token_type_hint == "access_token":
                return STORE.by_access_token(token_string)
            if token_type_hint == "refresh_token":
                return STORE.by_refresh_token(token_string)
            return STORE.by_refresh_token(token_string) or STORE.by_access_token(token_string)

    def revoke_token(self, token, request):
        value = request.form.get("token")
        with STORE.lock:
            STORE.counters["revocations"] += 1
            if token.refresh_token == value:
                # Revoking a refresh token revokes its access tokens too (Salesforce).
                STORE.revoke_family(token.family)
            else:
                token.access_token_revoked = True


class SalesforceIntrospectionEndpoint(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_post"]

    def create_endpoint_response(self, request):
        with STORE.lock:
            STORE.counters["introspections"] += 1
        return super().create_endpoint_response(request)

    def query_token(self, token_string, token_type_hint):
        with STORE.lock:
            if token_type_hint == "refresh_token":
                return STORE.by_refresh_token(token_string)
            return STORE.by_access_token(token_string) or STORE.by_refresh_token(token_string)

    def check_permission(self, token, client, request):
        return token.check_client(client)

    def introspect_token(self, token):
        return {
            "active": True,
            "client_id": token.client.client_id,
            "token_type": "access_token",
            "username": token.user.username,
            "scope": token.get_scope(),
            "sub": token.user.user_id,
            "exp": token.issued_at + token.expires_in,
            "iat": token.issued_at,
            "nbf": token.issued_at,
        }


class SalesforceTokenGenerator(BearerTokenGenerator):
    """Authlib's bearer generator, shaped like Salesforce's token response."""

    def __init__(self, base_url: str):
        super().__init__(
            access_token_generator=lambda **kw: f"{ORG_ID_15}!AQ{secrets.token_urlsafe(48)}",
            refresh_token_generator=lambda **kw: f"5Aep{secrets.token_urlsafe(60)}",
            # Salesforce returns no expires_in: a falsy lifetime makes Authlib omit it.
            expires_generator=lambda client, grant_type: 0,
        )
        self.base_url = base_url

    def generate(self, grant_type, client, user=None, scope=None, expires_in=None,
                 include_refresh_token=True):
        token = super().generate(grant_type, client, user, scope, expires_in,
                                 include_refresh_token)
        token.pop("expires_in", None)
        identity = f"{self.base_url}/id/{user.org_id}/{user.user_id}"
        issued_at = str(int(time.time() * 1000))
        # Salesforce: base64(HMAC-SHA256(key = consumer secret, msg = id + issued_at)).
        key = client.client_secret.encode()
        mac = hmac.new(key, (identity + issued_at).encode(), hashlib.sha256)
        token.update(
            {
                "instance_url": self.base_url,
                "id": identity,
                "issued_at": issued_at,
                "signature": base64.b64encode(mac.digest()).decode(),
            }
        )
        return token


# --------------------------------------------------------------------------------------
# The Flask app
# --------------------------------------------------------------------------------------


def create_app(client: Client, base_url: str) -> Flask:
    app = Flask(__name__)
    app.config["OAUTH2_SCOPES_SUPPORTED"] = SCOPES
    user = User(to_18(ORG_ID_15), to_18(USER_ID_15), "interop@example.com")

    def query_client(client_id):
        return STORE.clients.get(client_id)

    def save_token(token, req):
        with STORE.lock:
            old = getattr(req, "refresh_token", None)
            family = old.family if isinstance(old, Token) else uuid.uuid4().hex
            STORE.tokens.append(Token(req.client, req.user, family, token))

    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_token_generator("default", SalesforceTokenGenerator(base_url))
    server.register_client_auth_method(SALESFORCE_TOKEN_AUTH, authenticate_by_token)
    server.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(required=True)])
    server.register_grant(RefreshTokenGrant)
    server.register_endpoint(SalesforceRevocationEndpoint)
    server.register_endpoint(SalesforceIntrospectionEndpoint)

    @app.get("/services/oauth2/authorize")
    def authorize():
        with STORE.lock:
            STORE.counters["authorizations"] += 1
        try:
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            return server.handle_error_response(None, error)
        # Auto-approval: the resource owner is always `user`.
        return server.create_authorization_response(grant_user=user, grant=grant)

    @app.post("/services/oauth2/token")
    def token():
        grant_type = request.form.get("grant_type")
        with STORE.lock:
            STORE.counters["token_requests"] += 1
        if "Authorization" in request.headers:
            # Refusing Basic is Authlib's job (the grants allow client_secret_post only);
            # this just lets the test see whether the client sent a header at all.
            with STORE.lock:
                STORE.counters["authorization_headers"] += 1
        response = server.create_token_response()
        with STORE.lock:
            if response.status_code == 200:
                if grant_type == "refresh_token":
                    STORE.counters["refreshes"] += 1
                elif grant_type == "authorization_code":
                    STORE.counters["code_exchanges"] += 1
            elif grant_type == "refresh_token":
                STORE.counters["refresh_failures"] += 1
        return response

    @app.post("/services/oauth2/revoke")
    def revoke():
        return server.create_endpoint_response(RevocationEndpoint.ENDPOINT_NAME)

    @app.post("/services/oauth2/introspect")
    def introspect():
        return server.create_endpoint_response(IntrospectionEndpoint.ENDPOINT_NAME)

    @app.get("/debug/counters")
    def counters():
        with STORE.lock:
            return jsonify(dict(STORE.counters))

    def on_client_authenticated(sender, client=None, grant=None, **extra):
        # Authlib's `client_authenticated` signal: the method its registry accepted.
        method = getattr(getattr(grant, "request", None), "auth_method", None)
        with STORE.lock:
            STORE.counters["last_client_auth_method"] = method

    client_authenticated.connect(on_client_authenticated, weak=False)
    return app


def watch_stdin():
    """Exit once standard input closes: the test that started us has gone."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except Exception:  # noqa: BLE001 - any failure means the parent is gone
        pass
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-stdin-watch", action="store_true",
                        help="keep running when standard input closes")
    args = parser.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if os.environ.get("INTEROP_SERVER_DEBUG"):
        logging.basicConfig(level=logging.DEBUG)

    client = Client(args.client_id, args.client_secret, args.redirect_uri)
    STORE.clients[client.client_id] = client

    # Bind first (port 0 picks a free one), then build the app with the real base URL.
    holder: dict[str, Flask] = {}

    def dispatch(environ, start_response):
        return holder["app"](environ, start_response)

    httpd = make_server(args.host, args.port, dispatch, threaded=True)
    base_url = f"http://{args.host}:{httpd.server_port}"
    holder["app"] = create_app(client, base_url)

    if not args.no_stdin_watch:
        threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"LISTENING {base_url}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
