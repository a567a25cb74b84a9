"""The SigV4 signer against the "GET Object" example of the S3 SigV4 documentation
(Authenticating Requests: Using the Authorization Header, examples)."""

from __future__ import annotations

from parsec_server.backend.blockstore.sigv4 import (
    EMPTY_PAYLOAD_SHA256,
    SigV4Signer,
    uri_encode,
)

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AMZ_DATE = "20130524T000000Z"
HEADERS = {"Host": "examplebucket.s3.amazonaws.com", "Range": "bytes=0-9"}
EXPECTED_SIGNATURE = "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"


def signer() -> SigV4Signer:
    return SigV4Signer(ACCESS_KEY, SECRET_KEY, "us-east-1")


def test_empty_payload_hash() -> None:
    assert EMPTY_PAYLOAD_SHA256 == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_get_object_canonical_request_and_string_to_sign() -> None:
    headers = {**HEADERS, "x-amz-content-sha256": EMPTY_PAYLOAD_SHA256, "x-amz-date": AMZ_DATE}
    request, signed_headers = SigV4Signer.canonical_request(
        "GET", "/test.txt", "", headers, EMPTY_PAYLOAD_SHA256
    )
    assert signed_headers == "host;range;x-amz-content-sha256;x-amz-date"
    assert request == (
        "GET\n"
        "/test.txt\n"
        "\n"
        "host:examplebucket.s3.amazonaws.com\n"
        "range:bytes=0-9\n"
        f"x-amz-content-sha256:{EMPTY_PAYLOAD_SHA256}\n"
        "x-amz-date:20130524T000000Z\n"
        "\n"
        "host;range;x-amz-content-sha256;x-amz-date\n"
        f"{EMPTY_PAYLOAD_SHA256}"
    )
    assert signer().string_to_sign(AMZ_DATE, request) == (
        "AWS4-HMAC-SHA256\n"
        "20130524T000000Z\n"
        "20130524/us-east-1/s3/aws4_request\n"
        "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
    )


def test_get_object_signature() -> None:
    headers = signer().sign("GET", "/test.txt", HEADERS, EMPTY_PAYLOAD_SHA256, AMZ_DATE)
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 "
        "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        f"Signature={EXPECTED_SIGNATURE}"
    )
    assert headers["x-amz-date"] == AMZ_DATE
    assert headers["x-amz-content-sha256"] == EMPTY_PAYLOAD_SHA256
    assert headers["Host"] == "examplebucket.s3.amazonaws.com"
    assert headers["Range"] == "bytes=0-9"


def test_signing_key_follows_the_date() -> None:
    s = signer()
    first = s.signing_key("20130524")
    assert s.signing_key("20130524") == first
    assert s.signing_key("20130525") != first
    # The same signature whatever day was signed before.
    s.sign("GET", "/x", {"Host": "h"}, EMPTY_PAYLOAD_SHA256, "20200101T000000Z")
    headers = s.sign("GET", "/test.txt", HEADERS, EMPTY_PAYLOAD_SHA256, AMZ_DATE)
    assert headers["Authorization"].endswith(f"Signature={EXPECTED_SIGNATURE}")


def test_uri_encode() -> None:
    assert uri_encode("MyOrg/0f3c2b1a-1111-4222-8333-444455556666", encode_slash=False) == (
        "MyOrg/0f3c2b1a-1111-4222-8333-444455556666"
    )
    assert uri_encode("a b+c*d~e_f.g-h/é", encode_slash=False) == "a%20b%2Bc%2Ad~e_f.g-h/%C3%A9"
    assert uri_encode("a/b") == "a%2Fb"


def test_same_signature_as_botocore_for_a_path_style_put() -> None:
    import hashlib

    from botocore.auth import S3SigV4Auth  # type: ignore[import-untyped, unused-ignore]
    from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped, unused-ignore]
    from botocore.credentials import Credentials  # type: ignore[import-untyped, unused-ignore]

    body = b"some block data"
    path = "/parsec/" + uri_encode(
        "My Org/0f3c2b1a-1111-4222-8333-444455556666", encode_slash=False
    )
    request = AWSRequest(method="PUT", url=f"http://127.0.0.1:9000{path}", data=body)
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "region1").add_auth(request)
    amz_date = request.headers["X-Amz-Date"]

    ours = SigV4Signer(ACCESS_KEY, SECRET_KEY, "region1").sign(
        "PUT", path, {"Host": "127.0.0.1:9000"}, hashlib.sha256(body).hexdigest(), amz_date
    )
    assert request.headers["X-Amz-Content-SHA256"] == ours["x-amz-content-sha256"]
    # botocore writes `, ` between the parts, the specification `,`: both are accepted.
    assert request.headers["Authorization"].replace(", ", ",") == ours["Authorization"]
