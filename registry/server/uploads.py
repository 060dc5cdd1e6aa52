"""Before a commit: which files go through LFS (preupload), the LFS batch API, signed URLs.

The LFS PUT carries no token: the batch answer hands out upload URLs signed with the server's
secret, valid for ``UPLOAD_URL_TTL`` seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from registry.lfs import is_lfs_path
from registry.server.auth import require_write
from registry.server.blobstore import BlobStore, is_sha256
from registry.server.errors import HubHTTPError, bad_request, forbidden
from registry.server.queries import resolve_revision, tree_files, visible_repo
from registry.server.types import Identity, ServerConfig
from registry.server.validation import check_path

UPLOAD_URL_TTL = 3600
# Objects one LFS batch request may name. huggingface_hub sends at most 256 and git-lfs 100;
# the git-lfs batch API answers more than a server takes with 413.
MAX_BATCH_OBJECTS = 1000


class Uploads:
    """Answers the questions a client asks before it commits, and signs its LFS uploads."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobStore,
        config: ServerConfig,
        secret: bytes,
    ) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.config = config
        self._secret = secret

    def preupload(
        self, identity: Identity | None, repo_id: str, revision: str, files: list[Any]
    ) -> dict[str, Any]:
        """Tell the client which files go through LFS and which are already there (``oid``)."""
        with self.sessions.begin() as session:
            repo = visible_repo(session, identity, repo_id)
            require_write(identity, repo.namespace)
            commit = resolve_revision(session, repo, revision)
            current = {f.path: f for f in tree_files(session, commit.id)}
        answers = []
        for item in files:
            if not isinstance(item, dict):
                raise bad_request("preupload: each file must be an object")
            path = check_path(item.get("path"))
            size = item.get("size")
            if not isinstance(size, int) or size < 0:
                raise bad_request(f"preupload: invalid size for {path!r}")
            remote = current.get(path)
            oid = None if remote is None else (remote.sha256 if remote.is_lfs else remote.git_oid)
            answers.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if size > 0 and is_lfs_path(path, size) else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return {"files": answers, "commitOid": commit.sha}

    def lfs_batch(
        self, identity: Identity | None, repo_id: str, body: Any, base_url: str
    ) -> dict[str, Any]:
        """git-lfs batch API, upload operation only: signed upload URLs for missing objects."""
        if not isinstance(body, dict) or body.get("operation") not in ("upload", "download"):
            raise bad_request("LFS batch: body must be an object with operation 'upload'")
        with self.sessions.begin() as session:
            repo = visible_repo(session, identity, repo_id)
            if body["operation"] == "upload":
                require_write(identity, repo.namespace)
        if body["operation"] != "upload":
            raise bad_request(
                "LFS batch: only the 'upload' operation is served; download via /resolve"
            )
        objects = body.get("objects")
        if not isinstance(objects, list):
            raise bad_request("LFS batch: 'objects' must be a list")
        if len(objects) > MAX_BATCH_OBJECTS:
            raise HubHTTPError(
                413,
                f"LFS batch: {len(objects)} objects in one request, at most {MAX_BATCH_OBJECTS}",
            )
        expires = int(time.time()) + UPLOAD_URL_TTL
        out = [self._batch_answer(obj, expires, base_url) for obj in objects]
        return {"transfer": "basic", "hash_algo": "sha256", "objects": out}

    def _batch_answer(self, obj: Any, expires: int, base_url: str) -> dict[str, Any]:
        """One object's answer: too large, already stored, or where to upload it."""
        if not isinstance(obj, dict):
            raise bad_request("LFS batch: each object must be {oid, size}")
        oid, size = obj.get("oid"), obj.get("size")
        if not isinstance(oid, str) or not is_sha256(oid) or not isinstance(size, int) or size < 0:
            raise bad_request(f"LFS batch: invalid object {obj!r}")
        if size > self.config.max_upload_size:
            return {
                "oid": oid,
                "size": size,
                "error": {
                    "code": 422,
                    "message": f"file of {size} bytes exceeds the upload limit of "
                    f"{self.config.max_upload_size} bytes",
                },
            }
        if self.blobs.size_of(oid) == size:
            return {"oid": oid, "size": size}
        sig = self.sign_upload(oid, size, expires)
        return {
            "oid": oid,
            "size": size,
            "authenticated": True,
            "actions": {
                "upload": {
                    "href": f"{base_url}/api/lfs-upload/{oid}?size={size}&exp={expires}&sig={sig}"
                },
                "verify": {"href": f"{base_url}/api/lfs-verify/{oid}", "header": {}},
            },
        }

    def sign_upload(self, oid: str, size: int, expires: int) -> str:
        """HMAC of (oid, size, expiry) under the server secret: the LFS PUT carries no token."""
        msg = f"{oid}:{size}:{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def check_upload_signature(self, oid: str, size: str, expires: str, sig: str) -> int:
        """Validate a signed upload URL; return the announced size."""
        try:
            size_i, exp_i = int(size), int(expires)
        except ValueError:
            raise bad_request("upload URL: size and exp must be integers") from None
        if not is_sha256(oid):
            raise bad_request("upload URL: oid must be a sha256")
        expected = self.sign_upload(oid, size_i, exp_i)
        if not hmac.compare_digest(expected, sig):
            raise forbidden("upload URL signature is invalid")
        if exp_i < time.time():
            raise forbidden("upload URL has expired; ask the LFS batch endpoint again")
        if size_i > self.config.max_upload_size:
            raise HubHTTPError(
                413, f"file exceeds the upload limit of {self.config.max_upload_size} bytes"
            )
        return size_i
