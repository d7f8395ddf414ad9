"""A small S3 client: SigV4-signed PutObject, multipart upload and GetObject.

Written by hand (about 200 lines) instead of depending on boto3: the agent
needs four calls, all of them covered by a write-only ``s3:PutObject``
policy (multipart uploads included), and botocore would add some 80 MB of
data files and a second of import time to a root process on a host under
attack. GetObject is used by ``fetch`` on the analyst's side only.

Uploads never abort or list (that would need more than ``PutObject``): an
interrupted multipart upload is simply restarted from the first part with a
new upload id; a bucket lifecycle rule (AbortIncompleteMultipartUpload)
removes the leftovers (README).
"""
from __future__ import annotations

import configparser
import hashlib
import hmac
import http.client
import re
import ssl
import time
from typing import BinaryIO, Callable
from urllib.parse import quote, urlsplit

from ..errors import ShipError
from .targets import Target

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
TIMEOUT_S = 60.0
_UPLOAD_ID_RE = re.compile(rb"<UploadId>([^<]{1,1024})</UploadId>")


def read_credentials(path: str) -> tuple[str, str]:
    """Return (access key id, secret key) from an AWS shared-credentials file's [default]."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_string(fh.read(65536))
    except (OSError, UnicodeDecodeError, configparser.Error) as err:
        raise ShipError(f"cannot read the credentials file ({err})", path) from err
    try:
        section = parser["default"]
        return section["aws_access_key_id"].strip(), section["aws_secret_access_key"].strip()
    except KeyError as err:
        raise ShipError("the credentials file needs a [default] section with "
                        "aws_access_key_id and aws_secret_access_key", path) from err


def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class S3Client:
    """Signed requests to one S3 target (path-style on a custom endpoint, virtual-hosted on AWS)."""

    def __init__(self, target: Target, credentials: tuple[str, str] | None = None) -> None:
        self.target = target
        self.access_key, self.secret_key = credentials or read_credentials(target.credentials_file)
        ep = urlsplit(target.endpoint)
        self.secure = ep.scheme == "https"
        self.port = ep.port or (443 if self.secure else 80)
        if ep.hostname and ep.hostname.endswith(".amazonaws.com"):
            self.host, self.base = f"{target.bucket}.{ep.hostname}", ""
        else:
            self.host, self.base = str(ep.hostname), "/" + target.bucket
        self.host_header = self.host if ep.port is None else f"{self.host}:{self.port}"
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the kept-alive connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.secure:
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=TIMEOUT_S,
                    context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        return self._conn

    def _send(self, method: str, url: str, body: bytes | memoryview,
              headers: dict[str, str]) -> http.client.HTTPResponse:
        """Send a request; a kept-alive connection the server closed meanwhile is
        replaced once (every call we make may be repeated safely)."""
        reused = self._conn is not None
        try:
            conn = self._connection()
            conn.request(method, url, body=bytes(body) if body else None, headers=headers)
            return conn.getresponse()
        except (OSError, http.client.HTTPException):
            self.close()
            if not reused:
                raise
        conn = self._connection()
        conn.request(method, url, body=bytes(body) if body else None, headers=headers)
        return conn.getresponse()

    def _headers(self, method: str, path: str, query: dict[str, str], payload_sha: str,
                 extra: dict[str, str]) -> dict[str, str]:
        now = time.gmtime()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", now)
        day = amz_date[:8]
        headers = {"host": self.host_header, "x-amz-content-sha256": payload_sha,
                   "x-amz-date": amz_date, **{k.lower(): v for k, v in extra.items()}}
        signed = sorted(headers)
        canonical = "\n".join([
            method, quote(path, safe="/-_.~"),
            "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                     for k, v in sorted(query.items())),
            "".join(f"{h}:{headers[h].strip()}\n" for h in signed),
            ";".join(signed), payload_sha])
        scope = f"{day}/{self.target.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = _sign(_sign(_sign(_sign(("AWS4" + self.secret_key).encode(), day),
                                self.target.region), "s3"), "aws4_request")
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                    f"SignedHeaders={';'.join(signed)}, Signature={signature}")
        return headers

    def request(self, method: str, key: str, query: dict[str, str] | None = None,
                body: bytes | memoryview = b"", payload_sha: str | None = None,
                extra: dict[str, str] | None = None,
                sink: Callable[[bytes], None] | None = None) -> tuple[dict[str, str], bytes]:
        """Send one signed request; return (response headers, body) or raise ShipError.

        With sink, a 200 response body is passed to it in chunks instead of returned.
        """
        query = query or {}
        path = f"{self.base}/{key}"
        sha = payload_sha or (hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256)
        headers = self._headers(method, path, query, sha, extra or {})
        url = quote(path, safe="/-_.~")
        if query:
            url += "?" + "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                                  if v else quote(k, safe="-_.~") for k, v in sorted(query.items()))
        try:
            resp = self._send(method, url, body, headers)
            if resp.status == 200 and sink is not None:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    sink(chunk)
                data = b""
            else:
                data = resp.read(1 << 20)
            rheaders = {k.lower(): v for k, v in resp.getheaders()}
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise ShipError(f"{method} failed: {err}", key) from err
        if resp.status != 200:
            code = re.search(rb"<Code>([^<]{1,100})</Code>", data)
            self.close()
            raise ShipError(f"{method} answered HTTP {resp.status}"
                            f"{' ' + code.group(1).decode('ascii', 'replace') if code else ''}",
                            key)
        return rheaders, data

    # -- the calls -------------------------------------------------------------
    def put_object(self, key: str, body: bytes) -> None:
        """Write one whole object (PutObject)."""
        self.request("PUT", key, body=body, extra={"content-type": "application/octet-stream"})

    def create_multipart(self, key: str) -> str:
        """Start a multipart upload (needs only s3:PutObject); return its upload id."""
        _, data = self.request("POST", key, {"uploads": ""},
                               extra={"content-type": "application/octet-stream"})
        match = _UPLOAD_ID_RE.search(data)
        if match is None:
            raise ShipError("CreateMultipartUpload returned no UploadId", key)
        return match.group(1).decode("ascii", "replace")

    def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        """Upload one part; return its ETag."""
        headers, _ = self.request("PUT", key, {"partNumber": str(number), "uploadId": upload_id},
                                  body=body)
        return headers.get("etag", "")

    def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None:
        """Complete a multipart upload from its parts' ETags."""
        parts = "".join(f"<Part><PartNumber>{i}</PartNumber><ETag>{etag}</ETag></Part>"
                        for i, etag in enumerate(etags, 1))
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        self.request("POST", key, {"uploadId": upload_id}, body=body)

    def upload(self, key: str) -> S3Upload:
        """Open a write-only stream into one object."""
        return S3Upload(self, key)

    def get_object(self, key: str, sink: Callable[[bytes], None]) -> None:
        """Read one object, passing its bytes to sink (fetch, on the analyst's side)."""
        self.request("GET", key, sink=sink)

    get = get_object


class S3Upload:
    """A write-only stream into one object: buffered into parts, single PUT when small."""

    def __init__(self, client: S3Client, key: str) -> None:
        self.client = client
        self.key = key
        self.part_bytes = client.target.part_bytes
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.etags: list[str] = []
        self.size = 0
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        """Add bytes to the object (a full part is uploaded at once)."""
        self.buffer += data
        self.size += len(data)
        self.sha.update(data)
        while len(self.buffer) >= self.part_bytes:
            self._part(bytes(self.buffer[:self.part_bytes]))
            del self.buffer[:self.part_bytes]
        return len(data)

    def flush(self) -> None:
        """Do nothing: parts go out when full (file-like API for the encryptor)."""

    def _part(self, body: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self.client.create_multipart(self.key)
        self.etags.append(self.client.upload_part(self.key, self.upload_id,
                                                  len(self.etags) + 1, body))

    def finish(self) -> None:
        """Write the object: one PutObject when it fits a part, else complete the upload."""
        if self.upload_id is None:
            self.client.put_object(self.key, bytes(self.buffer))
        else:
            if self.buffer:
                self._part(bytes(self.buffer))
            self.client.complete_multipart(self.key, self.upload_id, self.etags)
        self.buffer = bytearray()


def copy_into(upload: S3Upload, src: BinaryIO, chunk: int = 1 << 20) -> None:
    """Copy a readable stream into an upload (no encryption)."""
    while True:
        data = src.read(chunk)
        if not data:
            return
        upload.write(data)
