"""Objects over the stores' own HTTP APIs, for what rclone cannot do: create an object only if
no object holds its key, refused by the store itself, and read it back fast enough to poll.

| type  | create                                          | refused with                      |
|-------|-------------------------------------------------|-----------------------------------|
| s3    | PutObject, `If-None-Match: *` (SigV4, botocore) | 412 PreconditionFailed            |
| gcs   | multipart upload, `ifGenerationMatch=0`         | 412                               |
| azure | Put Blob, `If-None-Match: *`, the site's SAS    | 409 BlobAlreadyExists (or 412)    |

S3 answers 409 ConditionalRequestConflict while another conditional write of the same key is
in flight: that is retried. fake-gcs-server honours ifGenerationMatch on multipart uploads
only (not on media or resumable ones), which is why GCS uses multipart; real GCS honours it
on all three. Objects sit under the site's media remote path, as with put/get/list.

Messages name the site, the store and a fix. They never hold a URL (an Azure SAS is part of
it), a header or a response body: only the HTTP status and the store's error code, a token.
"""
from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from infra import secrets
from infra.sites.contract import SiteOutputs

if TYPE_CHECKING:  # objectstores imports this module
    from infra.data.objectstores import ObjectStore

TIMEOUT = (3.0, 20.0)  # connect, read (seconds)
CONFLICT_RETRIES = 5
_local = threading.local()


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class ObjectApi:
    """One storage type's object requests. Subclasses build the requests and name the answers
    that mean "the key is taken" and "no such object"; this base sends them and decides."""

    taken: ClassVar[dict[int, tuple[str, ...]]]  # status -> error codes meaning the key is held (empty: any)
    absent: ClassVar[tuple[str, ...]]  # error codes of a 404 that mean no such object (the bucket exists)
    conflict: ClassVar[tuple[str, ...]] = ()  # error codes of a write to retry

    def create_request(self, store: ObjectStore, site: SiteOutputs, name: str, data: bytes) -> Request:
        raise NotImplementedError

    def read_request(self, store: ObjectStore, site: SiteOutputs, name: str) -> Request:
        raise NotImplementedError

    def create(self, store: ObjectStore, site: SiteOutputs, key: str, data: bytes) -> bytes | None:
        name, action = object_name(site, key), f"create {key}"
        for attempt in range(CONFLICT_RETRIES):
            answer = self._send(store, site, action, self.create_request(store, site, name, data), written=True)
            if answer.status_code in (200, 201):
                return None
            code, codes = error_code(answer), self.taken.get(answer.status_code)
            if codes is not None and (not codes or code in codes):
                existing = self.read(store, site, key)
                if existing is not None:
                    return existing
            elif code not in self.conflict:
                raise refused(store, site, action, answer)
            time.sleep(0.05 * (attempt + 1))  # a conflicting write in flight, or the holder deleted
        raise store.store_error(site, action, f"the key stayed contended over {CONFLICT_RETRIES} tries",
                                "run again; if it persists, check what else writes this key")

    def read(self, store: ObjectStore, site: SiteOutputs, key: str) -> bytes | None:
        action = f"read {key}"
        answer = self._send(store, site, action, self.read_request(store, site, object_name(site, key)))
        if answer.status_code == 200:
            return answer.content
        if answer.status_code == 404 and error_code(answer) in self.absent:
            return None
        raise refused(store, site, action, answer)

    def _send(self, store: ObjectStore, site: SiteOutputs, action: str, request: Request,
              written: bool = False) -> requests.Response:
        host, port = store.endpoint(site.repository)
        try:
            return session().request(request.method, request.url, headers=request.headers, data=request.body,
                                     timeout=TIMEOUT, verify=tls_verify(site), allow_redirects=False)
        except requests.exceptions.SSLError:
            raise store.store_error(site, action, "the TLS certificate of the endpoint could not be verified",
                                    "point the repository's storage-ca-file at the CA that signed it") from None
        except requests.exceptions.ConnectTimeout:
            raise store.store_error(site, action, f"the endpoint {host}:{port} did not answer within "
                                    f"{TIMEOUT[0]:g} s", _UNREACHABLE) from None
        except requests.exceptions.ConnectionError as error:
            if written and not _before_sending(error):
                # Sent, perhaps taken: still uncertain when the store is down now (it may have died after).
                down = "" if store.reachable(None, site.repository) else f"the endpoint {host}:{port} did not answer; "
                raise uncertain(store, site, action, f"{down}the connection broke after the object was sent") from None
            raise store.store_error(site, action, f"the endpoint {host}:{port} did not answer", _UNREACHABLE) from None
        except requests.exceptions.Timeout:
            if written:
                raise uncertain(store, site, action, f"no answer within {TIMEOUT[1]:g} s") from None
            raise store.store_error(site, action, f"no answer within {TIMEOUT[1]:g} s",
                                    "check the store's endpoint and network, then run again") from None


_UNREACHABLE = "check that the store (or its emulator) is running and that endpoint and port are right"


def uncertain(store: ObjectStore, site: SiteOutputs, action: str, detail: str) -> UncertainWrite:
    error = store.store_error(site, action, f"{detail}: the store may or may not hold the object",
                              "run again: creating it again finds out (a claim recognises its own object)")
    return UncertainWrite(str(error))


def _before_sending(error: requests.exceptions.ConnectionError) -> bool:
    # A refused or unresolvable connection never carried the request; anything else may have.
    text = repr(error.args)
    return any(s in text for s in ("NewConnectionError", "NameResolutionError", "Connection refused",
                                   "No route to host", "Network is unreachable"))


def refused(store: ObjectStore, site: SiteOutputs, action: str, answer: requests.Response) -> StoreError:
    """A StoreError for an answer that is neither success nor the expected refusal."""
    code, status = error_code(answer), answer.status_code
    token = f"HTTP {status}" + (f" {code}" if code else "")
    if status in (401, 403):
        return store.store_error(site, action, f"the store refused the credentials [{token}]",
                                 f"check {store.credentials} in the site's writer_credentials: wrong, expired or "
                                 f"rotated, or not allowed to write to this {store.noun}")
    if status == 404:
        return store.store_error(site, action, f"the {store.noun} does not exist [{token}]",
                                 f"create the {store.noun} (`pulumi up` for the site creates it) or correct its "
                                 "name in the site's outputs")
    return store.store_error(site, action, f"the store answered {token}",
                             "run again; if it persists, check the store's status")


def error_code(answer: requests.Response) -> str:
    """The store's error code (S3 and Azure XML <Code>, Azure's header, GCS's JSON reason): a token."""
    header = answer.headers.get("x-ms-error-code", "")
    if header:
        return _token(header)
    match = re.search(r"<Code>([A-Za-z0-9.]+)</Code>", answer.text[:4096]) or \
        re.search(r'"reason"\s*:\s*"([A-Za-z0-9.]+)"', answer.text[:4096])
    return match.group(1) if match else ""


def _token(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9.]{1,64}", text) else ""


def session() -> requests.Session:
    """One keep-alive session per thread and process (a forked child must not share sockets)."""
    if getattr(_local, "pid", None) != os.getpid():
        _local.session, _local.pid = requests.Session(), os.getpid()
        _local.session.trust_env = False  # no proxies or CA bundles from the environment: verify is explicit
    return _local.session


def tls_verify(site: SiteOutputs) -> str | bool:
    options = site.repository.options
    if options.get("storage-verify-tls", "y").lower() in ("n", "no", "false", "0"):
        return False
    return options.get("storage-ca-file") or True


def object_name(site: SiteOutputs, key: str) -> str:
    """The object's name inside its bucket: the media remote's path below the bucket, then the key."""
    below = site.media_remote.path.strip("/").partition("/")[2]
    return f"{below}/{key}" if below else key


def credential(store: ObjectStore, site: SiteOutputs, name: str) -> str:
    """A writer credential (or repository option) by its pgBackRest name, resolved; "" when absent."""
    value = site.writer_credentials.get(name) or site.repository.options.get(name, "")
    return secrets.resolve(value, f"site {site.site} writer credential {name}") if value else ""


class S3Api(ObjectApi):
    taken = {412: ("PreconditionFailed", "")}
    absent = ("NoSuchKey",)
    conflict = ("ConditionalRequestConflict",)

    def create_request(self, store, site, name, data):
        return self._signed(store, site, "PUT", name, data, {"If-None-Match": "*",
                                                            "Content-Type": "application/json"})

    def read_request(self, store, site, name):
        return self._signed(store, site, "GET", name)

    def _signed(self, store, site, method, name, data=b"", headers=None) -> Request:
        options = site.repository.options
        host, port = store.endpoint(site.repository)
        netloc = host if port == 443 else f"{host}:{port}"
        path = urllib.parse.quote(name)
        if options.get("s3-uri-style", "host") == "path":
            url = f"https://{netloc}/{store.bucket(site)}/{path}"
        else:
            url = f"https://{store.bucket(site)}.{netloc}/{path}"
        keys = Credentials(credential(store, site, "s3-key"), credential(store, site, "s3-key-secret"),
                           credential(store, site, "s3-token") or None)
        request = AWSRequest(method=method, url=url, data=data, headers=dict(headers or {}))
        S3SigV4Auth(keys, "s3", options.get("s3-region", "us-east-1")).add_auth(request)
        return Request(method, url, dict(request.headers.items()), data)


class GCSApi(ObjectApi):
    taken = {412: ()}
    absent = ("notFound", "")  # fake-gcs-server answers a plain 404; a missing bucket is checked apart
    TOKEN_URL = "https://oauth2.googleapis.com/token"
    SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"

    def create_request(self, store, site, name, data):
        boundary = uuid.uuid4().hex
        meta = json.dumps({"name": name, "contentType": "application/json"}).encode()
        body = b"".join([f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(), meta,
                         f"\r\n--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode(), data,
                         f"\r\n--{boundary}--\r\n".encode()])
        bucket = urllib.parse.quote(store.bucket(site), safe="")
        url = f"{self._base(site)}/upload/storage/v1/b/{bucket}/o?uploadType=multipart&ifGenerationMatch=0"
        return Request("POST", url, {**self._auth(store, site),
                                     "Content-Type": f"multipart/related; boundary={boundary}"}, body)

    def read_request(self, store, site, name):
        bucket, obj = (urllib.parse.quote(v, safe="") for v in (store.bucket(site), name))
        return Request("GET", f"{self._base(site)}/storage/v1/b/{bucket}/o/{obj}?alt=media", self._auth(store, site))

    def read(self, store, site, key):
        data = super().read(store, site, key)
        if data is None and not self._bucket_exists(store, site):
            raise store.store_error(site, f"read {key}", f"the {store.noun} does not exist [HTTP 404]",
                                    f"create the {store.noun} (`pulumi up` for the site creates it) or correct its "
                                    "name in the site's outputs")
        return data

    def _bucket_exists(self, store, site) -> bool:
        bucket = urllib.parse.quote(store.bucket(site), safe="")
        answer = self._send(store, site, "read bucket", Request("GET", f"{self._base(site)}/storage/v1/b/{bucket}",
                                                                self._auth(store, site)))
        return answer.status_code != 404

    @staticmethod
    def _base(site: SiteOutputs) -> str:
        return "https://" + (site.repository.options.get("gcs-endpoint") or "storage.googleapis.com")

    def _auth(self, store, site) -> dict[str, str]:
        if site.writer_credentials.get(store.SERVICE_KEY):
            return {"Authorization": f"Bearer {self._service_token(store, site)}"}
        token = credential(store, site, "gcs-key")
        if site.repository.options.get("gcs-key-type", "service") != "token" or not token:
            raise store.store_error(site, "authenticate", "the site has no GCS token or service account key",
                                    f"give the site writer credential {store.SERVICE_KEY} or gcs-key with "
                                    "gcs-key-type=token (`failover inventory pull`)")
        return {"Authorization": f"Bearer {token}"}

    _tokens: ClassVar[dict[str, tuple[str, float]]] = {}

    def _service_token(self, store, site) -> str:
        """An OAuth access token for the site's service account key (JWT bearer grant), cached until
        a minute before it expires."""
        key = json.loads(store._service_key(site.writer_credentials, site.site))
        cached = self._tokens.get(key["client_email"])
        if cached and cached[1] > time.time() + 60:
            return cached[0]
        answer = self._send(store, site, "authenticate", Request(
            "POST", key.get("token_uri") or self.TOKEN_URL, {"Content-Type": "application/x-www-form-urlencoded"},
            urllib.parse.urlencode({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                    "assertion": jwt_assertion(key, self.SCOPE)}).encode()))
        if answer.status_code != 200:
            raise store.store_error(site, "authenticate", f"the token endpoint refused the service account key "
                                    f"[HTTP {answer.status_code}]", f"check {store.credentials}")
        token = answer.json()["access_token"]
        secrets.remember(token)
        self._tokens[key["client_email"]] = (token, time.time() + int(answer.json().get("expires_in", 3600)))
        return token


def jwt_assertion(key: dict, scope: str, now: float | None = None) -> str:
    """A signed RS256 JWT asking Google's token endpoint for an access token (service account flow)."""
    issued = int(now if now is not None else time.time())
    claims = {"iss": key["client_email"], "scope": scope, "aud": key.get("token_uri") or GCSApi.TOKEN_URL,
              "iat": issued, "exp": issued + 3600}

    def part(value: dict) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).rstrip(b"=")

    signed = part({"alg": "RS256", "typ": "JWT", "kid": key.get("private_key_id", "")}) + b"." + part(claims)
    private = serialization.load_pem_private_key(key["private_key"].encode(), None)
    signature = private.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    return (signed + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


class AzureApi(ObjectApi):
    taken = {409: ("BlobAlreadyExists",), 412: ("ConditionNotMet", "")}
    absent = ("BlobNotFound",)
    VERSION = "2019-12-12"  # the SAS the emulator and the Azure program sign is of this version or later

    def create_request(self, store, site, name, data):
        return Request("PUT", self._url(store, site, name), {"x-ms-blob-type": "BlockBlob", "If-None-Match": "*",
                                                             "x-ms-version": self.VERSION,
                                                             "Content-Type": "application/json"}, data)

    def read_request(self, store, site, name):
        return Request("GET", self._url(store, site, name), {"x-ms-version": self.VERSION})

    def _url(self, store, site, name) -> str:
        """The blob's URL through the site's SAS (an account SAS URL, or a container's)."""
        sas_url = store.rclone_section(site.media_remote, site.site, site.writer_credentials).get("sas_url", "")
        if not sas_url:
            raise store.store_error(site, "authenticate", "the site has no SAS for its media container",
                                    "give the site writer credential media-sas (or media-sas-url) "
                                    "(`failover inventory pull`)")
        base, _, query = sas_url.partition("?")
        container = store.bucket(site)
        if base.rstrip("/").rsplit("/", 1)[-1] != container:  # an account SAS: the container goes in the path
            base = f"{base.rstrip('/')}/{container}"
        return f"{base.rstrip('/')}/{urllib.parse.quote(name)}?{query}"


# Last, because infra.data.storage loads objectstores at its end, which needs the classes above:
# imported first, this module would otherwise hand objectstores a module without them.
from infra.data.storage import StoreError, UncertainWrite  # noqa: E402
