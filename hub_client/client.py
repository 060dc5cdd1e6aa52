"""``HubClient``: the one door to a Hub (huggingface.co or ``loradex serve``).

It wraps ``HfApi(endpoint=..., token=...)`` and turns the client's exceptions into loradex's:
``HubUnavailable`` when the endpoint cannot be reached, ``ModuleNotFound`` for a missing repo,
revision or file, ``HubError`` for any other refusal. Everything else in ``hub_client`` receives
a ``HubClient`` instead of building its own, which is what makes the real-server tests simple.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loradex.errors import (
    GatedRepo,
    HubError,
    HubRateLimited,
    HubRepoNotFound,
    HubUnavailable,
    InvalidAdapter,
    LoradexError,
    ModuleNotFound,
)
from loradex.files import atomic_write

if TYPE_CHECKING:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import CommitInfo, ModelInfo

# First bytes fetched for a safetensors header; adapters' headers are a few KB.
HEADER_PROBE_BYTES = 64 * 1024
MAX_TEXT_BYTES = 10 * 1024 * 1024  # a config or model card; the largest cards are ~1 MB
# A 429 that names no wait (neither RateLimit nor Retry-After): how long to wait before trying.
DEFAULT_RATE_LIMIT_WAIT = 5.0
# Listing pages of the public Hub hold at most 1,000 repos.
LISTING_PAGE_SIZE = 1000


def disable_xet() -> None:
    """Uploads to a classic LFS server must not use the Xet protocol (checked at call time)."""
    import os

    from huggingface_hub import constants

    os.environ["HF_HUB_DISABLE_XET"] = "1"
    constants.HF_HUB_DISABLE_XET = True


class HubClient:
    """A Hub endpoint plus credentials; every method raises loradex errors only."""

    def __init__(
        self,
        endpoint: str,
        token: str | None = None,
        *,
        api: HfApi | None = None,
        cache_dir: str | Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        from huggingface_hub import HfApi

        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.timeout = timeout
        # token=False stops huggingface_hub from sending a token saved on this machine.
        self.api = api or HfApi(endpoint=self.endpoint, token=token or False)
        # user agent + auth, built once: the sync sends thousands of small requests
        self._headers: dict[str, str] = self.api._build_hf_headers(token=token or False)

    def __repr__(self) -> str:
        return f"HubClient({self.endpoint!r})"

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Translate huggingface_hub / transport errors raised inside the block."""
        import httpx2
        from huggingface_hub import errors as hf_errors

        try:
            yield
        except LoradexError:
            raise
        except hf_errors.OfflineModeIsEnabled as exc:
            raise HubUnavailable(
                f"{what}: offline mode (HF_HUB_OFFLINE) and not in the cache"
            ) from exc
        except hf_errors.LocalEntryNotFoundError as exc:
            raise HubUnavailable(
                f"cannot reach the Hub at {self.endpoint} and {what} is not in the cache"
            ) from exc
        except hf_errors.GatedRepoError as exc:  # before RepositoryNotFoundError, its parent
            status = exc.response.status_code if exc.response is not None else "?"
            raise GatedRepo(
                f"{what}: gated repo, access not granted ({status}: {_server_message(exc)})"
            ) from exc
        except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as exc:
            raise HubRepoNotFound(f"{what}: {_server_message(exc)}") from exc
        except hf_errors.RemoteEntryNotFoundError as exc:
            raise ModuleNotFound(f"{what}: {_server_message(exc)}") from exc
        except hf_errors.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            if status == 429 and exc.response is not None:
                wait = rate_limit_wait(exc.response.headers)
                raise HubRateLimited(
                    f"{what}: rate-limited by the Hub at {self.endpoint} (retry in {wait:g} s)",
                    wait,
                ) from exc
            if status == 503 and exc.response is not None and "retry-after" in exc.response.headers:
                # A Hub that says when to come back (ours while its database restarts):
                # waited out like a rate limit, not a failure.
                wait = rate_limit_wait(exc.response.headers)
                raise HubRateLimited(
                    f"{what}: the Hub at {self.endpoint} is temporarily unavailable (503, "
                    f"retry in {wait:g} s)",
                    wait,
                ) from exc
            if isinstance(status, int) and status >= 500:
                raise HubUnavailable(f"Hub at {self.endpoint} failed ({status}) on {what}") from exc
            raise HubError(f"{what}: Hub answered {status}: {_server_message(exc)}") from exc
        except (httpx2.TransportError, ConnectionError, TimeoutError) as exc:
            raise HubUnavailable(
                f"cannot reach the Hub at {self.endpoint} "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from exc

    # ---------------------------------------------------------------- reads

    def check_reachable(self) -> None:
        """One request without retries: fail fast with HubUnavailable when the Hub is down.

        huggingface_hub retries listings with backoff for ~20 s; a sync should not.
        """
        from huggingface_hub.utils import get_session

        with self.errors("listing models"):
            get_session().get(
                f"{self.endpoint}/api/models",
                params={"limit": 1},
                headers=self._headers,
                timeout=self.timeout,
            )

    def listing_url(
        self,
        *,
        filters: Iterable[str] = (),
        author: str | None = None,
        search: str | None = None,
        page_size: int = LISTING_PAGE_SIZE,
    ) -> str:
        """The first page of the repos matching all ``filters`` (tags), oldest-stable order.

        Sorted by creation time, the one key a repo never changes: on a Hub whose cursor
        remembers the last key (this one's and huggingface.co's), a repo created or updated
        while the pages are read moves no other repo across a page boundary, so none is
        missed or seen twice.
        """
        from urllib.parse import urlencode

        params: list[tuple[str, str]] = [("filter", f) for f in filters]
        if author:
            params.append(("author", author))
        if search:
            params.append(("search", search))
        params += [
            ("sort", "createdAt"),
            ("limit", str(page_size)),
            ("full", "True"),
            ("cardData", "True"),
        ]
        return f"{self.endpoint}/api/models?{urlencode(params)}"

    def list_models_page(self, url: str) -> tuple[list[ModelInfo], str | None]:
        """One page of a listing and the URL of the next (its ``Link: rel="next"``), or None.

        A next link off this endpoint is refused: the token would go with it.
        """
        from huggingface_hub.hf_api import ModelInfo
        from huggingface_hub.utils import get_session, hf_raise_for_status

        with self.errors("listing models"):
            response = get_session().get(url, headers=self._headers, timeout=self.timeout)
            hf_raise_for_status(response)
            next_url = response.links.get("next", {}).get("url")
        try:
            items = response.json()
        except ValueError:
            items = None
        if not isinstance(items, list):
            raise HubError(f"listing models: the Hub at {self.endpoint} sent no list")
        if next_url is not None and not next_url.startswith(f"{self.endpoint}/"):
            raise HubError(
                f"listing models: the Hub's next-page link leaves {self.endpoint}: {next_url}"
            )
        infos = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise HubError(f"listing models: the Hub at {self.endpoint} sent a bad entry")
            item.setdefault("siblings", None)
            try:
                infos.append(ModelInfo(**item))
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                raise HubError(f"listing models: bad entry for {item['id']}: {exc}") from exc
        return infos, next_url

    def model_info(self, repo_id: str, revision: str | None = None) -> ModelInfo:
        """Model info with file metadata (sizes, LFS sha256)."""
        with self.errors(f"model {repo_id}"):
            return self.api.model_info(repo_id, revision=revision, files_metadata=True)

    def _get(
        self,
        repo_id: str,
        filename: str,
        revision: str,
        *,
        first: int | None = None,
        limit: int = MAX_TEXT_BYTES,
    ) -> tuple[bytes, int | None]:
        """GET a file, or its ``first`` bytes; return (bytes, the file's total size if told).

        The body is streamed and never read past what was asked: a Hub that ignores the Range
        header (or sends an endless body) costs at most ``first`` bytes, and a whole file over
        ``limit`` bytes is refused rather than held in memory.
        """
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import get_session, hf_raise_for_status

        url = hf_hub_url(repo_id, filename, revision=revision, endpoint=self.endpoint)
        headers = dict(self._headers)
        if first is not None:
            headers["range"] = f"bytes=0-{first - 1}"
        cap = first if first is not None else limit + 1
        with get_session().stream("GET", url, headers=headers, timeout=self.timeout) as response:
            hf_raise_for_status(response)
            total = _total_size(response.headers, response.status_code)
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) >= cap:
                    break
        if first is None and len(data) > limit:
            raise InvalidAdapter(f"{repo_id}/{filename}: larger than {limit} bytes")
        return bytes(data[:cap]), total

    def fetch_text(self, repo_id: str, filename: str, revision: str) -> str:
        """A small text file of a repo at a revision (no cache write; at most 10 MiB)."""
        with self.errors(f"{repo_id}/{filename}"):
            return self._get(repo_id, filename, revision)[0].decode("utf-8", errors="replace")

    def fetch_bytes(self, repo_id: str, filename: str, revision: str, limit: int) -> bytes:
        """A small binary file of a repo at a revision, refused past ``limit`` bytes."""
        with self.errors(f"{repo_id}/{filename}"):
            return self._get(repo_id, filename, revision, limit=limit)[0]

    def fetch_safetensors_header(
        self, repo_id: str, filename: str, revision: str, file_size: int | None = None
    ) -> dict[str, Any]:
        """A safetensors header via range requests (never the tensors), checked by the registry."""
        from registry.safetensors_header import MAX_HEADER_BYTES, read_safetensors_header

        label = f"{repo_id}/{filename}"
        with self.errors(label):
            data, total = self._get(repo_id, filename, revision, first=HEADER_PROBE_BYTES)
            size = (
                file_size if file_size is not None else (total if total is not None else len(data))
            )
            if len(data) >= 8:
                (length,) = struct.unpack("<Q", data[:8])
                # MAX_HEADER_BYTES bounds what a Hub can make us read for one header.
                if len(data) < 8 + length <= min(size, 8 + MAX_HEADER_BYTES):
                    data, _ = self._get(repo_id, filename, revision, first=8 + length)
        return read_safetensors_header(data, file_size=size, name=label)

    def download(
        self,
        repo_id: str,
        filename: str,
        revision: str | None = None,
        *,
        local_dir: str | Path | None = None,
        offline: bool = False,
    ) -> Path:
        """Download one file into the cache (atomic, resumable) or ``local_dir``."""
        from huggingface_hub import hf_hub_download

        with self.errors(f"{repo_id}/{filename}"):
            return Path(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    endpoint=self.endpoint,
                    token=self.token or False,
                    cache_dir=self.cache_dir,
                    local_dir=local_dir,
                    local_files_only=offline,
                    etag_timeout=self.timeout,
                )
            )

    @staticmethod
    def remember_ref(snapshot_file: Path, revision: str, sha: str) -> None:
        """Record ``revision -> sha`` in the cache (``refs/<revision>``), as a download by branch
        name would, so an offline pull of that branch finds a snapshot fetched by sha."""
        if revision == sha or "snapshots" not in snapshot_file.parts:
            return
        parts = snapshot_file.parts
        storage = Path(*parts[: len(parts) - 1 - parts[::-1].index("snapshots")])
        ref = storage / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(ref, lambda tmp: tmp.write_text(sha))

    # --------------------------------------------------------------- writes

    def create_repo(self, repo_id: str, *, private: bool = False) -> str:
        """Create ``repo_id`` unless it exists; return its URL."""
        with self.errors(f"creating {repo_id}"):
            return str(self.api.create_repo(repo_id, private=private, exist_ok=True))

    def upload_folder(self, repo_id: str, folder: Path, message: str) -> CommitInfo:
        """Upload a folder as one commit on ``main`` (classic LFS, never Xet)."""
        disable_xet()
        with self.errors(f"uploading to {repo_id}"):
            return self.api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                commit_message=message,
                ignore_patterns=[".*", "**/.*", "__pycache__/**"],
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _server_message(exc: Any) -> str:
    response = getattr(exc, "response", None)
    if response is not None:
        message = response.headers.get("x-error-message")
        if message:
            return str(message)
    return _first_line(exc)


def rate_limit_wait(headers: Mapping[str, str]) -> float:
    """Seconds a 429 asks to wait: the IETF ``RateLimit`` reset when nothing remains (what
    huggingface.co sends, read by huggingface_hub's own parser), else ``Retry-After`` (seconds
    or an HTTP date), else ``DEFAULT_RATE_LIMIT_WAIT``."""
    from email.utils import parsedate_to_datetime

    from huggingface_hub.utils import parse_ratelimit_headers

    info = parse_ratelimit_headers(headers)
    if info is not None and info.remaining == 0:
        return float(info.reset_in_seconds)
    value = (headers.get("retry-after") or "").strip()
    if value.isdigit():
        return float(value)
    if value:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return DEFAULT_RATE_LIMIT_WAIT
        from datetime import UTC, datetime

        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return DEFAULT_RATE_LIMIT_WAIT


def _total_size(headers: Mapping[str, str], status: int) -> int | None:
    """The whole file's size: from Content-Range on a 206, Content-Length on a plain 200."""
    content_range = headers.get("content-range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = headers.get("content-length", "")
    return int(length) if status == 200 and length.isdigit() else None
