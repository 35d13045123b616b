"""The object requests of objecthttp as data: what each type sends for a conditional create,
how answers are read, and that no credential reaches a URL we print or a message."""
from __future__ import annotations

import base64
import json
import os

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from infra.data import objecthttp
from infra.data.storage import storage_for
from infra.sites.contract import MediaRemote, Repository, SiteOutputs

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQ="


def _site(name: str, repo: Repository, remote: MediaRemote, creds: dict[str, str]) -> SiteOutputs:
    return SiteOutputs(name, "aws", "r", "primary", ("h",), ("h",), "u", "h", 5432, repo, remote, creds)


def _answer(status: int, body: str = "", headers: dict[str, str] | None = None) -> requests.Response:
    answer = requests.Response()
    answer.status_code, answer._content = status, body.encode()
    answer.headers.update(headers or {})
    return answer


@pytest.fixture
def s3_site(monkeypatch):
    monkeypatch.setenv("FAILOVER_TEST_HTTP_KEY", "AKIATESTKEY")
    monkeypatch.setenv("FAILOVER_TEST_HTTP_SECRET", SECRET)
    repo = Repository("s3", {"s3-bucket": "b", "s3-endpoint": "s3.example", "s3-region": "eu-west-1",
                             "s3-uri-style": "path", "storage-port": "9000"})
    return _site("aws", repo, MediaRemote("s3", {}, "b/media"),
                 {"s3-key": "env/FAILOVER_TEST_HTTP_KEY", "s3-key-secret": "env/FAILOVER_TEST_HTTP_SECRET"})


def test_s3_create_is_a_signed_put_with_if_none_match(s3_site):
    storage = storage_for("s3")
    request = storage.objects.create_request(storage, s3_site, "media/.failover/claims/epoch-000001.json", b"{}")
    assert request.method == "PUT" and request.url == "https://s3.example:9000/b/media/.failover/claims/epoch-000001.json"
    assert request.headers["If-None-Match"] == "*"
    assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIATESTKEY/")
    assert "/eu-west-1/s3/aws4_request" in request.headers["Authorization"]
    assert SECRET not in json.dumps(request.headers) + request.url


def test_gcs_create_is_a_multipart_upload_with_generation_zero():
    repo = Repository("gcs", {"gcs-bucket": "g", "gcs-endpoint": "localhost:4443", "gcs-key-type": "token"})
    os.environ["FAILOVER_TEST_HTTP_TOKEN"] = "tok-123456"
    site = _site("gcp", repo, MediaRemote("google cloud storage", {}, "g/media"),
                 {"gcs-key": "env/FAILOVER_TEST_HTTP_TOKEN"})
    storage = storage_for("gcs")
    request = storage.objects.create_request(storage, site, "media/k.json", b'{"a": 1}')
    # media and resumable uploads ignore the precondition on fake-gcs-server; multipart honours it
    assert request.url == "https://localhost:4443/upload/storage/v1/b/g/o?uploadType=multipart&ifGenerationMatch=0"
    assert request.headers["Authorization"] == "Bearer tok-123456"
    assert b'{"name": "media/k.json"' in request.body and b'{"a": 1}' in request.body
    read = storage.objects.read_request(storage, site, "media/k.json")
    assert read.url == "https://localhost:4443/storage/v1/b/g/o/media%2Fk.json?alt=media"


@pytest.mark.parametrize("sas_url, expected", [
    ("https://127.0.0.5:10000/failover?sv=1&sig=abc", "https://127.0.0.5:10000/failover/c/media/k.json?sv=1&sig=abc"),
    ("https://acct.blob.core.windows.net/c?sv=1&sig=abc", "https://acct.blob.core.windows.net/c/media/k.json?sv=1&sig=abc"),
])
def test_azure_create_goes_through_the_sas_of_an_account_or_a_container(monkeypatch, sas_url, expected):
    monkeypatch.setenv("FAILOVER_TEST_HTTP_SAS", sas_url)
    repo = Repository("azure", {"azure-account": "acct", "azure-container": "c"})
    site = _site("azure", repo, MediaRemote("azureblob", {}, "c/media"), {"media-sas-url": "env/FAILOVER_TEST_HTTP_SAS"})
    storage = storage_for("azure")
    request = storage.objects.create_request(storage, site, "media/k.json", b"{}")
    assert request.url == expected
    assert request.headers["If-None-Match"] == "*" and request.headers["x-ms-blob-type"] == "BlockBlob"


def test_an_azure_site_without_a_sas_is_told_which_credential_to_give():
    site = _site("azure", Repository("azure", {"azure-account": "acct", "azure-container": "c"}),
                 MediaRemote("azureblob", {}, "c/media"), {})
    storage = storage_for("azure")
    with pytest.raises(Exception, match="site azure: .*no SAS for its media container.*media-sas"):
        storage.objects.create_request(storage, site, "k", b"")


@pytest.mark.parametrize("answer, code", [
    (_answer(412, "<Error><Code>PreconditionFailed</Code><Message>At least one</Message></Error>"),
     "PreconditionFailed"),
    (_answer(409, "<?xml?><Error><Code>BlobAlreadyExists</Code></Error>", {"x-ms-error-code": "BlobAlreadyExists"}),
     "BlobAlreadyExists"),
    (_answer(404, '{"error": {"errors": [{"reason": "notFound", "message": "No such object: g/k"}]}}'), "notFound"),
    (_answer(403, "free text with https://x/?sig=SECRET"), ""),
])
def test_error_codes_are_tokens_never_free_text(answer, code):
    assert objecthttp.error_code(answer) == code


def test_a_refusal_names_site_store_and_fix_without_the_url(s3_site):
    storage = storage_for("s3")
    message = str(objecthttp.refused(storage, s3_site, "create k", _answer(403, "<Code>AccessDenied</Code>")))
    assert message.startswith("site aws: s3 storage bucket b at s3.example:9000: create k: the store refused "
                              "the credentials [HTTP 403 AccessDenied]; fix: check the access key pair")
    assert "https://" not in message and SECRET not in message


def test_the_service_account_assertion_is_a_signed_jwt():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    key = {"client_email": "writer@p.iam.gserviceaccount.com", "private_key": pem, "private_key_id": "k1",
           "token_uri": "https://oauth2.googleapis.com/token"}
    token = objecthttp.jwt_assertion(key, objecthttp.GCSApi.SCOPE, now=1000)
    header, claims, signature = token.split(".")

    def decode(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    assert json.loads(decode(header)) == {"alg": "RS256", "typ": "JWT", "kid": "k1"}
    assert json.loads(decode(claims)) == {"iss": "writer@p.iam.gserviceaccount.com", "scope": objecthttp.GCSApi.SCOPE,
                                          "aud": "https://oauth2.googleapis.com/token", "iat": 1000, "exp": 4600}
    private.public_key().verify(decode(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())


def test_object_names_sit_under_the_media_path():
    site = _site("x", Repository("s3", {}), MediaRemote("s3", {}, "/bucket/media/"), {})
    assert objecthttp.object_name(site, ".failover/k.json") == "media/.failover/k.json"
    bare = _site("x", Repository("s3", {}), MediaRemote("s3", {}, "bucket"), {})
    assert objecthttp.object_name(bare, "k.json") == "k.json"
