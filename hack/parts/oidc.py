"""The rig's OIDC token endpoint: OAuth 2.0 client credentials (RFC 6749 4.4)
issuing RS256 JWT access tokens, for Kafka's SASL/OAUTHBEARER listener.

Run by hack/parts/oidc.sh with the rig venv's python (joserfc signs). Not a
full OpenID provider: no authorization endpoint, no ID tokens, one client.

  GET  /.well-known/openid-configuration   issuer, token_endpoint, jwks_uri
  GET  /jwks                                the signing key's public half
  POST /token                               client_credentials grant

The key is new on every start, so tokens from an earlier run do not verify.
"""

import argparse
import base64
import binascii
import hmac
import json
import re
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote_plus

from joserfc import jwk, jwt

# RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), space-separated.
SCOPE_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$")
MAX_BODY = 64 * 1024


class OAuthError(Exception):
    """An RFC 6749 5.2 error response."""

    def __init__(self, status, error, description):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def log(line):
    # stdout goes to .rig/logs/oidc.log (spawn); flush so it is there at once.
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def make_handler(cfg, key):
    jwks = {"keys": [key.as_dict(private=False)]}
    base = cfg.issuer.rstrip("/")
    discovery = {
        "issuer": cfg.issuer,
        "token_endpoint": f"{base}/token",
        "jwks_uri": f"{base}/jwks",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }

    class Handler(BaseHTTPRequestHandler):
        server_version = "bgprig-oidc/1"
        # Kafka's Java clients and curl speak HTTP/1.1; keep-alive is not needed.
        protocol_version = "HTTP/1.0"
        note = ""

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/.well-known/openid-configuration":
                self.reply(200, discovery)
            elif path == "/jwks":
                self.reply(200, jwks, content_type="application/jwk-set+json")
            elif path == "/token":
                self.reply(405, {"error": "invalid_request", "error_description": "use POST"},
                           headers={"Allow": "POST"})
            else:
                self.reply(404, {"error": "not_found"})

        def do_POST(self):
            if self.path.split("?", 1)[0] != "/token":
                self.reply(404, {"error": "not_found"})
                return
            try:
                body = self.token()
            except OAuthError as e:
                headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
                if e.status == 401:
                    # RFC 6749 5.2 / RFC 9110: a 401 names the scheme to use.
                    headers["WWW-Authenticate"] = 'Basic realm="bgprig-oidc"'
                self.note = f"{e.error}: {e.description}"
                self.reply(e.status, {"error": e.error, "error_description": e.description},
                           headers=headers)
                return
            self.reply(200, body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

        def token(self):
            form = self.read_form()
            client_id, basic = self.client_credentials(form)
            # Parameters sent without a value count as omitted (RFC 6749 3.1).
            grant_type = form.get("grant_type")
            if not grant_type:
                raise OAuthError(400, "invalid_request", "grant_type is missing")
            if grant_type != "client_credentials":
                raise OAuthError(400, "unsupported_grant_type",
                                 f"only client_credentials is supported, not {grant_type!r}")
            scope = form.get("scope") or cfg.default_scope
            if not SCOPE_RE.match(scope):
                raise OAuthError(400, "invalid_scope", "scope is not a space-separated list of scope tokens")
            now = int(time.time())
            claims = {
                "iss": cfg.issuer,
                "sub": client_id,
                "aud": cfg.audience,
                "client_id": client_id,
                "scope": scope,
                "iat": now,
                "exp": now + cfg.token_seconds,
                "jti": uuid.uuid4().hex,
            }
            token = jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)
            self.note = f"issued to {client_id} ({'basic' if basic else 'post'}) scope={scope!r}"
            return {"access_token": token, "token_type": "Bearer",
                    "expires_in": cfg.token_seconds, "scope": scope}

        def read_form(self):
            ctype = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if ctype != "application/x-www-form-urlencoded":
                raise OAuthError(400, "invalid_request",
                                 "the body must be application/x-www-form-urlencoded")
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                raise OAuthError(400, "invalid_request", "Content-Length is required") from None
            if length < 0 or length > MAX_BODY:
                raise OAuthError(400, "invalid_request", "body too large")
            try:
                pairs = parse_qsl(self.rfile.read(length).decode("utf-8"),
                                  keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError:
                raise OAuthError(400, "invalid_request", "the body is not UTF-8") from None
            form = {}
            for name, value in pairs:
                # RFC 6749 3.2: parameters must not be included more than once.
                if name in form:
                    raise OAuthError(400, "invalid_request", f"{name} is repeated")
                form[name] = value
            return form

        def client_credentials(self, form):
            """Authenticate the client; return (client id, whether Basic was used)."""
            auth = self.headers.get("Authorization")
            form_id, form_secret = form.get("client_id"), form.get("client_secret")
            if auth is not None:
                scheme, _, creds = auth.partition(" ")
                if scheme.lower() != "basic":
                    raise OAuthError(401, "invalid_client", f"unsupported authentication scheme {scheme!r}")
                # RFC 6749 2.3.1: one authentication method per request.
                if form_secret:
                    raise OAuthError(400, "invalid_request",
                                     "client authenticated by both HTTP Basic and client_secret")
                try:
                    pair = base64.b64decode(creds.strip(), validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    raise OAuthError(401, "invalid_client", "malformed Basic credentials") from None
                if ":" not in pair:
                    raise OAuthError(401, "invalid_client", "malformed Basic credentials")
                # RFC 6749 2.3.1: id and secret are form-encoded before Basic.
                cid, secret = (unquote_plus(p) for p in pair.split(":", 1))
                if form_id and form_id != cid:
                    raise OAuthError(400, "invalid_request", "client_id differs from the Basic credentials")
                basic = True
            else:
                if not form_id:
                    raise OAuthError(401, "invalid_client", "no client authentication")
                cid, secret, basic = form_id, form_secret or "", False
            # Compare both in constant time, so a wrong id and a wrong secret look alike.
            id_ok = hmac.compare_digest(cid.encode(), cfg.client_id.encode())
            secret_ok = hmac.compare_digest(secret.encode(), cfg.client_secret.encode())
            if not (id_ok and secret_ok):
                raise OAuthError(401, "invalid_client", "unknown client or wrong secret")
            return cid, basic

        def reply(self, status, body, content_type="application/json", headers=None):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        # One line per request, on stdout.
        def log_request(self, code="-", size="-"):
            note = f" {self.note}" if self.note else ""
            log(f"{self.client_address[0]} {self.command} {self.path} {code}{note}")

        def log_message(self, fmt, *args):
            log(f"{self.client_address[0]} {fmt % args}")

        def log_error(self, fmt, *args):
            # send_error's own line is followed by log_request's; one is enough.
            pass

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--listen", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=19180)
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--audience", required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--client-secret", required=True)
    ap.add_argument("--default-scope", default="kafka")
    ap.add_argument("--token-seconds", type=int, default=3600)
    cfg = ap.parse_args()
    # kid = the RFC 7638 thumbprint: a new key is a new kid, which makes
    # Kafka's JWKS cache fetch again instead of failing on a stale key.
    key = jwk.RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"},
                                  private=True, auto_kid=True)
    # Tests may ask for many tokens at once: a longer backlog than the default 5.
    ThreadingHTTPServer.request_queue_size = 64
    server = ThreadingHTTPServer((cfg.listen, cfg.port), make_handler(cfg, key))
    server.daemon_threads = True
    log(f"listening on {cfg.listen}:{cfg.port}, issuer {cfg.issuer}, kid {key.kid}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
