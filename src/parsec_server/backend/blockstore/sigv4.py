"""AWS Signature Version 4 for S3 requests signed in headers (`Authorization`).

From the AWS specification: canonical request, string to sign, signing key derived by
HMAC-SHA256 chaining (`AWS4<secret>`, date, region, service, `aws4_request`), signature
as lowercase hex. Only what the S3 blockstore's hot calls need: no query-string
presigning, no chunked payload signing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_PAYLOAD_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


def uri_encode(text: str, *, encode_slash: bool = True) -> str:
    """SigV4 URI encoding: every byte of the UTF-8 form except `A-Za-z0-9-_.~` as `%XX`
    (uppercase hex), and `/` too unless `encode_slash` is false (an object key's path)."""
    return quote(text, safe="-_.~" if encode_slash else "-_.~/")


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


class SigV4Signer:
    """Signs requests for one access key, region and service; the signing key of the
    current day is derived once and reused."""

    def __init__(self, access_key: str, secret_key: str, region: str, service: str = "s3") -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        self._service = service
        self._key_date = ""
        self._key = b""

    def signing_key(self, date: str) -> bytes:
        """The key for `date` (`YYYYMMDD`)."""
        if date != self._key_date:
            key = _hmac(f"AWS4{self._secret_key}".encode(), date)
            key = _hmac(key, self._region)
            key = _hmac(key, self._service)
            self._key = _hmac(key, "aws4_request")
            self._key_date = date
        return self._key

    def scope(self, date: str) -> str:
        return f"{date}/{self._region}/{self._service}/aws4_request"

    @staticmethod
    def canonical_request(
        method: str,
        canonical_uri: str,
        canonical_query: str,
        headers: Mapping[str, str],
        payload_hash: str,
    ) -> tuple[str, str]:
        """(canonical request, signed header list). `canonical_uri` is already URI-encoded
        (as sent); every header of `headers` is signed."""
        normalized = sorted(
            (name.lower(), " ".join(value.split())) for name, value in headers.items()
        )
        canonical_headers = "".join(f"{name}:{value}\n" for name, value in normalized)
        signed_headers = ";".join(name for name, _ in normalized)
        request = "\n".join(
            (
                method,
                canonical_uri,
                canonical_query,
                canonical_headers,
                signed_headers,
                payload_hash,
            )
        )
        return request, signed_headers

    def string_to_sign(self, amz_date: str, canonical_request: str) -> str:
        return "\n".join(
            (
                ALGORITHM,
                amz_date,
                self.scope(amz_date[:8]),
                hashlib.sha256(canonical_request.encode()).hexdigest(),
            )
        )

    def signature(self, amz_date: str, canonical_request: str) -> str:
        string_to_sign = self.string_to_sign(amz_date, canonical_request)
        return hmac.new(
            self.signing_key(amz_date[:8]), string_to_sign.encode(), hashlib.sha256
        ).hexdigest()

    def sign(
        self,
        method: str,
        canonical_uri: str,
        headers: Mapping[str, str],
        payload_hash: str,
        amz_date: str,
        canonical_query: str = "",
    ) -> dict[str, str]:
        """The headers to send: `headers` (which must include `host`) plus `x-amz-date`,
        `x-amz-content-sha256` and `Authorization`, all but the last signed.

        `amz_date` is the request time, `YYYYMMDDTHHMMSSZ` (UTC)."""
        to_sign = {**headers, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
        request, signed_headers = self.canonical_request(
            method, canonical_uri, canonical_query, to_sign, payload_hash
        )
        to_sign["Authorization"] = (
            f"{ALGORITHM} Credential={self._access_key}/{self.scope(amz_date[:8])},"
            f"SignedHeaders={signed_headers},"
            f"Signature={self.signature(amz_date, request)}"
        )
        return to_sign
