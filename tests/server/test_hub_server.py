"""The built-in Hub, driven by the real huggingface_hub client over HTTP (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import sqlalchemy as sa
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub import errors as hf_errors

from registry.db import make_engine
from registry.store import RegistryStore
from tests.support.hub import MAX_UPLOAD, HubServer, loradex, make_adapter


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def count_rows(hub: HubServer, table: str) -> int:
    engine = make_engine(hub.db_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)
    finally:
        engine.dispose()


def test_round_trip_bytes_hashes_and_registry_index(
    hub: HubServer, tmp_path: Path, hf_cache: Path
) -> None:
    folder = make_adapter(tmp_path / "ad", seed=1)
    api = hub.api(hub.alice)
    assert api.whoami()["name"] == "alice"
    url = api.create_repo("alice/round-trip")
    assert str(url) == f"{hub.url}/alice/round-trip"
    assert str(api.create_repo("alice/round-trip", exist_ok=True)) == str(url)
    commit = api.upload_folder(repo_id="alice/round-trip", folder_path=folder)
    assert commit.commit_url == f"{hub.url}/alice/round-trip/commit/{commit.oid}"

    info = hub.api().model_info("alice/round-trip", files_metadata=True)
    assert info.sha == commit.oid
    assert {"peft", "lora", "base_model:adapter:org/tiny-llama", "safetensors"} <= set(info.tags)
    assert info.card_data["base_model"] == "org/tiny-llama"
    siblings = {s.rfilename: s for s in info.siblings}
    weights = (folder / "adapter_model.safetensors").read_bytes()
    assert siblings["adapter_model.safetensors"].lfs.sha256 == sha256(weights)
    assert siblings["adapter_model.safetensors"].size == len(weights)
    assert siblings["adapter_config.json"].lfs is None

    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        path = hf_hub_download(
            "alice/round-trip", name, endpoint=hub.url, cache_dir=hf_cache, token=False
        )
        assert Path(path).read_bytes() == (folder / name).read_bytes()
    snapshot = Path(
        snapshot_download("alice/round-trip", endpoint=hub.url, cache_dir=hf_cache, token=False)
    )
    assert snapshot.name == commit.oid
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(
        [".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors"]
    )
    header = hub.api().parse_safetensors_file_metadata(
        "alice/round-trip", "adapter_model.safetensors"
    )
    assert len(header.tensors) == 4

    # Indexed into the registry tables of the same database at commit time.
    store = RegistryStore(make_engine(hub.db_url))
    module = store.get_module("alice/round-trip", source="local")
    assert module.revision == commit.oid
    assert module.rank == 4 and module.target_modules == ("q_proj", "v_proj")
    recorded = {f.path: f.sha256 for f in module.files}
    assert recorded["adapter_model.safetensors"] == sha256(weights)
    # deleting the repo removes it from the registry too
    api.delete_repo("alice/round-trip")
    from loradex.errors import ModuleNotFound

    with pytest.raises(ModuleNotFound):
        store.get_module("alice/round-trip", source="local")


def test_old_revisions_stay_downloadable(hub: HubServer, tmp_path: Path, hf_cache: Path) -> None:
    api = hub.api(hub.alice)
    api.create_repo("alice/history")
    first = api.upload_file(
        path_or_fileobj=b"v1\n", path_in_repo="notes.txt", repo_id="alice/history"
    )
    second = api.upload_file(
        path_or_fileobj=b"v2\n", path_in_repo="notes.txt", repo_id="alice/history"
    )
    assert first.oid != second.oid
    old = hf_hub_download(
        "alice/history",
        "notes.txt",
        revision=first.oid,
        endpoint=hub.url,
        cache_dir=hf_cache,
        token=False,
    )
    new = hf_hub_download(
        "alice/history", "notes.txt", endpoint=hub.url, cache_dir=hf_cache, token=False
    )
    assert Path(old).read_bytes() == b"v1\n" and Path(new).read_bytes() == b"v2\n"
    commits = [c.commit_id for c in api.list_repo_commits("alice/history")]
    assert commits[:2] == [second.oid, first.oid] and len(commits) == 3
    assert hub.api().model_info("alice/history", revision=first.oid).sha == first.oid
    # a stale parent commit is refused with 412 and changes nothing
    with pytest.raises(hf_errors.HfHubHTTPError) as exc:
        api.create_commit(
            "alice/history",
            [CommitOperationAdd("x.txt", b"x")],
            commit_message="late",
            parent_commit=first.oid,
        )
    assert exc.value.response.status_code == 412
    assert hub.api().model_info("alice/history").sha == second.oid


def test_pagination_follows_absolute_link_headers(hub: HubServer) -> None:
    api = hub.api(hub.bob)
    names = [f"bob/page-{i:02d}" for i in range(7)]
    for name in names:
        api.create_repo(name)
    for sort in (None, "lastModified", "createdAt"):
        params = {"author": "bob", "search": "page-", "limit": "3"} | (
            {"sort": sort} if sort else {}
        )
        seen, url, pages = [], f"{hub.url}/api/models", 0
        response = httpx.get(url, params=params)
        while True:
            assert response.status_code == 200
            pages += 1
            seen += [item["id"] for item in response.json()]
            if "next" not in response.links:
                break
            next_url = response.links["next"]["url"]
            assert next_url.startswith(f"{hub.url}/api/models?")
            query = parse_qs(urlparse(next_url).query)
            assert {k: v[0] for k, v in query.items() if k != "cursor"} == params
            response = httpx.get(next_url)
        assert pages == 3 and sorted(seen) == names and len(seen) == len(set(seen))
    # the client's own pagination code walks the same pages
    from huggingface_hub.utils._pagination import paginate

    items = list(
        paginate(f"{hub.url}/api/models", params={"author": "bob", "limit": 2}, headers={})
    )
    assert sorted(i["id"] for i in items if i["id"].startswith("bob/page-")) == names
    assert [m.id for m in hub.api().list_models(author="bob", search="page-03")] == ["bob/page-03"]
    bad = httpx.get(f"{hub.url}/api/models", params={"cursor": "not-a-cursor!"})
    assert bad.status_code == 400


def test_errors_map_to_the_client_exception_classes(hub: HubServer, hf_cache: Path) -> None:
    api = hub.api(hub.alice)
    api.create_repo("alice/errors")
    api.create_repo("alice/secret", private=True)
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        hub.api().model_info("alice/does-not-exist")
    with pytest.raises(hf_errors.RevisionNotFoundError):
        hub.api().model_info("alice/errors", revision="f" * 40)
    with pytest.raises(hf_errors.EntryNotFoundError):
        hf_hub_download(
            "alice/errors", "missing.bin", endpoint=hub.url, cache_dir=hf_cache, token=False
        )
    assert not hub.api().file_exists("alice/errors", "missing.bin")
    assert hub.api().repo_exists("alice/errors") and not hub.api().repo_exists("alice/nope")
    # private: invisible to others, listed for the owner
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        hub.api(hub.bob).model_info("alice/secret")
    assert "alice/secret" not in [m.id for m in hub.api().list_models(author="alice")]
    assert "alice/secret" in [m.id for m in api.list_models(author="alice")]
    # 401: unknown token on any endpoint, or no token for a write
    with pytest.raises(hf_errors.HfHubHTTPError) as exc:
        hub.api("ldx_not-a-real-token").model_info("alice/errors")
    assert exc.value.response.status_code == 401
    with pytest.raises(hf_errors.HfHubHTTPError) as exc:
        hub.api().create_repo("alice/anon")
    assert exc.value.response.status_code == 401
    # a revoked token is an unknown token
    zed = loradex("--db", hub.db_url, "token", "create", "zed").stdout.strip()
    assert hub.api(zed).whoami()["name"] == "zed"
    token_id = next(
        line.split()[0]
        for line in loradex("--db", hub.db_url, "token", "list").stdout.splitlines()
        if line.split()[1] == "zed"
    )
    loradex("--db", hub.db_url, "token", "revoke", token_id)
    with pytest.raises(hf_errors.HfHubHTTPError) as exc:
        hub.api(zed).whoami()
    assert exc.value.response.status_code == 401
    # 403: a valid token without rights on the namespace (and read-only tokens)
    for token in (hub.bob, hub.reader):
        with pytest.raises(hf_errors.HfHubHTTPError) as exc:
            hub.api(token).upload_file(
                path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/errors"
            )
        assert exc.value.response.status_code == 403
    # org membership gives write access
    api.create_repo("team/shared")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="team/shared")
    with pytest.raises(hf_errors.HfHubHTTPError) as exc:
        hub.api(hub.bob).create_repo("team/not-bobs")
    assert exc.value.response.status_code == 403
    # delete, then the id can be created afresh
    api.delete_repo("alice/errors")
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        hub.api().model_info("alice/errors")
    api.delete_repo("alice/errors", missing_ok=True)
    api.create_repo("alice/errors")
    assert len(api.list_repo_commits("alice/errors")) == 1


def _commit(
    hub: HubServer,
    repo: str,
    lines: list[dict[str, object]],
    token: str | None = None,
    content_type: str = "application/x-ndjson",
) -> httpx.Response:
    body = "\n".join(json.dumps(line) for line in lines)
    return httpx.post(
        f"{hub.url}/api/models/{repo}/commit/main",
        content=body,
        headers={**auth(token or hub.alice), "content-type": content_type},
    )


HEADER = {"key": "header", "value": {"summary": "raw commit"}}


@pytest.mark.parametrize(
    "path",
    [
        "../escape.txt",
        "a/../../b",
        "/etc/passwd",
        "a\\b.txt",
        ".git/config",
        "sub/.git/hooks/x",
        "a\x00b",
        "",
        "a//b",
        "./a",
        "a/" * 64 + "deep.txt",  # folder work grows with depth for every file
    ],
)
def test_commit_refuses_unsafe_paths(hub: HubServer, path: str) -> None:
    hub.api(hub.alice).create_repo("alice/paths", exist_ok=True)
    before = count_rows(hub, "hub_commits")
    file_line = {
        "key": "file",
        "value": {"path": path, "content": base64.b64encode(b"x").decode(), "encoding": "base64"},
    }
    response = _commit(hub, "alice/paths", [HEADER, file_line])
    assert response.status_code == 400, response.text
    assert response.headers["x-error-message"]
    assert count_rows(hub, "hub_commits") == before


def test_malformed_requests_get_4xx_never_5xx(hub: HubServer) -> None:
    api = hub.api(hub.alice)
    api.create_repo("alice/hostile", exist_ok=True)
    b64 = base64.b64encode(b"x").decode()
    bad_commits = [
        b"not json at all",
        b'{"key": "file", "value": {"path": "a.txt", "content": "eA=="}}',  # no header first
        json.dumps(HEADER).encode() + b"\n{broken",
        json.dumps(HEADER).encode()
        + b"\n"
        + json.dumps(
            {
                "key": "file",
                "value": {"path": "a.txt", "content": "%%%not-base64", "encoding": "base64"},
            }
        ).encode(),
        json.dumps(HEADER).encode()
        + b"\n"
        + json.dumps({"key": "teleport", "value": {"path": "a"}}).encode(),
        json.dumps(HEADER).encode()
        + b"\n"
        + json.dumps(
            {
                "key": "lfsFile",
                "value": {"path": "w.bin", "algo": "sha256", "oid": "0" * 64, "size": 3},
            }
        ).encode(),  # never uploaded
        json.dumps(HEADER).encode()
        + b"\n"
        + json.dumps({"key": "deletedFile", "value": {"path": "nope"}}).encode(),
        json.dumps({"key": "header", "value": {"summary": 3}}).encode(),
        json.dumps({"key": "header", "value": {"summary": "x", "parentCommit": "zz"}}).encode(),
        b"\xff\xfe\x00garbage",
        json.dumps([1, 2, 3]).encode(),
        b"[" * 100_000,  # RecursionError inside json.loads
        b'{"key": "header", "value": {"summary": ' + b"9" * 5000 + b"}}",  # int() digit limit
    ]
    for body in bad_commits:
        r = httpx.post(
            f"{hub.url}/api/models/alice/hostile/commit/main",
            content=body,
            headers={**auth(hub.alice), "content-type": "application/x-ndjson"},
        )
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
    requests = [
        ("POST", "/api/repos/create", b"{not json", {}),
        ("POST", "/api/repos/create", b"[]", {}),
        ("POST", "/api/repos/create", b'{"name": ' + b"[" * 100_000, {}),
        ("POST", "/api/repos/create", b'{"name": "n", "private": ' + b"1" * 5000 + b"}", {}),
        ("POST", "/api/repos/create", json.dumps({"name": "bad--name"}).encode(), {}),
        ("POST", "/api/repos/create", json.dumps({"name": "x" * 97}).encode(), {}),
        ("POST", "/api/repos/create", json.dumps({"name": ".hidden"}).encode(), {}),
        ("POST", "/api/repos/create", json.dumps({"name": "ok", "organization": 5}).encode(), {}),
        ("POST", "/api/repos/create", json.dumps({"name": "d", "type": "dataset"}).encode(), {}),
        ("POST", "/api/repos/create", b"{}", {"content-type": "text/plain"}),
        ("POST", "/api/models/alice/hostile/preupload/main", b'{"files": "nope"}', {}),
        (
            "POST",
            "/api/models/alice/hostile/preupload/main",
            json.dumps({"files": [{"path": "../x", "size": 1, "sample": b64}]}).encode(),
            {},
        ),
        (
            "POST",
            "/api/models/alice/hostile/preupload/main",
            json.dumps({"files": [{"path": "a", "size": -1}]}).encode(),
            {},
        ),
        (
            "POST",
            "/alice/hostile.git/info/lfs/objects/batch",
            b'{"operation": "upload", "objects": 5}',
            {},
        ),
        (
            "POST",
            "/alice/hostile.git/info/lfs/objects/batch",
            json.dumps({"operation": "upload", "objects": [{"oid": "xyz", "size": 1}]}).encode(),
            {},
        ),
        ("PUT", "/api/lfs-upload/" + "a" * 64 + "?size=1&exp=1&sig=bad", b"x", {}),
        ("PUT", "/api/lfs-upload/nothex?size=x&exp=y&sig=z", b"x", {}),
        ("POST", "/api/lfs-verify/" + "Z" * 64, b'{"oid": "x", "size": 1}', {}),
        ("POST", "/api/lfs-verify/" + "..%2F" * 21 + "x", b'{"oid": "x", "size": 1}', {}),
        ("GET", "/api/models?limit=abc", b"", {}),
        ("GET", "/api/models?limit=-3", b"", {}),
        ("GET", "/api/models?sort=random", b"", {}),
        # SQLite refuses LIKE patterns over 50 KB and expression trees over 1,000 levels
        ("GET", "/api/models?search=" + "a" * 60_000, b"", {}),
        ("GET", "/api/models?" + "&".join(["filter=x"] * 5000), b"", {}),
        ("GET", "/api/models?author=" + "a" * 60_000, b"", {}),
        ("GET", "/api/models/alice/hostile/tree/main/..%2F..%2Fetc", b"", {}),
        ("GET", "/api/models/alice/hostile/revision/not-a-branch", b"", {}),
        ("GET", "/api/models/..%2F../x", b"", {}),
        ("GET", "/api/models/alice/bad--name", b"", {}),
        ("GET", "/alice/hostile/resolve/main/%00", b"", {}),
        ("GET", "/alice/hostile/resolve/main/.gitattributes", b"", {"range": "bytes=oops"}),
        ("GET", "/alice/hostile/resolve/main/.gitattributes", b"", {"range": "bytes=0-1,5-6"}),
        ("GET", "/alice/hostile/resolve/main/%ff%fe", b"", {}),
        ("DELETE", "/api/repos/delete", b"nope", {}),
        ("GET", "/api/nothing/here", b"", {}),
        # NUL anywhere (PostgreSQL text cannot hold it) is the client's mistake, not a 500
        ("GET", "/api/models?search=%00", b"", {}),
        ("GET", "/api/models?author=a%00&filter=b%00", b"", {}),
        ("GET", "/api/models?cursor=W251bGwsICJhXHUwMDAwYiJd", b"", {}),
        (
            "GET",
            "/api/models?sort=lastModified&cursor=WyIyMDI0LTAxLTAxVDAwOjAwOjAwIiwgImFcdTAwMDBiIl0",
            b"",
            {},
        ),
        (
            "POST",
            "/api/models/alice/hostile/commit/main",
            json.dumps({"key": "header", "value": {"summary": "a\u0000"}}).encode(),
            {},
        ),
        (
            "POST",
            "/api/repos/create",
            json.dumps({"name": "ok", "organization": "al\u0000"}).encode(),
            {},
        ),
        ("POST", "/api/models/alice/hostile/paths-info/main", b"paths=a%00b", {}),
        ("POST", "/api/models/alice/hostile/paths-info/main", b"", {}),
        ("GET", "/api/models/alice/hostile/tree/main/" + "a/" * 64 + "b", b"", {}),
        ("GET", "/api/whoami-v2", b"", {}),
    ]
    with httpx.Client(base_url=hub.url, timeout=30) as client:
        for method, path, body, headers in requests:
            r = client.request(
                method,
                path,
                content=body,
                headers={**auth(hub.alice), **headers} if "whoami" not in path else headers,
            )
            assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
            assert r.headers.get("x-error-message") or r.status_code == 431, (method, path)
            if r.status_code == 404:
                assert r.headers.get("x-error-code") or path.startswith("/api/nothing")
        huge = client.get("/api/models", headers={"x-junk": "a" * 60_000})
        assert huge.status_code == 431
        # far past the limit, uvicorn's parser refuses and drops the connection itself
        with contextlib.suppress(httpx.TransportError):
            assert client.get("/api/models", headers={"x-junk": "a" * 300_000}).status_code < 500
        # an oversized body is refused from its Content-Length, before it is read; the
        # server may close the connection while the client is still sending
        try:
            r = client.post(
                "/api/repos/create", content=b"x" * (9 * 1024 * 1024), headers=auth(hub.alice)
            )
            assert r.status_code == 413
        except httpx.TransportError:
            pass
    # validate-yaml always answers JSON
    ok = httpx.post(f"{hub.url}/api/validate-yaml", json={"content": "---\nlicense: mit\n---\nhi"})
    assert ok.status_code == 200 and ok.json() == {"errors": [], "warnings": []}
    bad = httpx.post(f"{hub.url}/api/validate-yaml", json={"content": "---\n: [unclosed\n---\n"})
    assert bad.status_code == 400 and bad.json()["errors"]
    assert httpx.post(f"{hub.url}/api/validate-yaml", content=b"{").json()["errors"]


def test_card_metadata_bombs_are_not_expanded(hub: HubServer) -> None:
    """A few hundred bytes of YAML aliases must not become megabytes of cardData (or a 500)."""
    hub.api(hub.alice).create_repo("alice/bomb", exist_ok=True)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
    )
    cards = [f"---\n{bomb}---\n", "---\na: &x [*x]\n---\n", "---\na: " + "[" * 5000 + "\n---\n"]
    for card in cards:
        readme = {
            "key": "file",
            "value": {
                "path": "README.md",
                "content": base64.b64encode(card.encode()).decode(),
                "encoding": "base64",
            },
        }
        assert _commit(hub, "alice/bomb", [HEADER, readme]).status_code == 200
        info = httpx.get(f"{hub.url}/api/models/alice/bomb")
        assert info.status_code == 200 and len(info.content) < 5000, len(info.content)
        assert not info.json().get("cardData")
        check = httpx.post(f"{hub.url}/api/validate-yaml", json={"content": card})
        assert check.status_code == 400
        assert check.json()["errors"][0]["message"].startswith("invalid YAML front matter")


def test_range_requests_and_headers(hub: HubServer, tmp_path: Path) -> None:
    api = hub.api(hub.alice)
    api.create_repo("alice/ranges", exist_ok=True)
    data = bytes(range(256)) * 40
    commit = api.upload_file(path_or_fileobj=data, path_in_repo="blob.bin", repo_id="alice/ranges")
    url = f"{hub.url}/alice/ranges/resolve/main/blob.bin"
    head = httpx.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    assert head.headers["x-repo-commit"] == commit.oid
    assert (
        head.headers["etag"].strip('"') == sha256(data) == head.headers["x-linked-etag"].strip('"')
    )
    assert head.headers["x-linked-size"] == str(len(data)) and head.content == b""
    for spec, (start, end) in {
        "bytes=10-19": (10, 19),
        "bytes=10000-": (10000, len(data) - 1),
        "bytes=-5": (len(data) - 5, len(data) - 1),
        "bytes=10230-99999": (10230, len(data) - 1),
    }.items():
        r = httpx.get(url, headers={"range": spec})
        assert r.status_code == 206 and r.content == data[start : end + 1]
        assert r.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"
    r = httpx.get(url, headers={"range": f"bytes={len(data)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
    # a regular (non-LFS) file is tagged with its git blob sha1
    api.upload_file(path_or_fileobj=b"hello\n", path_in_repo="hello.txt", repo_id="alice/ranges")
    r = httpx.get(f"{hub.url}/alice/ranges/resolve/main/hello.txt")
    assert r.headers["etag"].strip('"') == hashlib.sha1(b"blob 6\x00hello\n").hexdigest()
    missing = httpx.head(f"{hub.url}/alice/ranges/resolve/main/nope.txt")
    assert missing.status_code == 404 and missing.headers["x-error-code"] == "EntryNotFound"
    assert missing.headers["x-repo-commit"]
    tree = api.list_repo_tree("alice/ranges", recursive=True)
    assert {e.path for e in tree} == {".gitattributes", "blob.bin", "hello.txt"}
    api.upload_file(
        path_or_fileobj=b"deep", path_in_repo="sub/dir/deep.txt", repo_id="alice/ranges"
    )
    infos = api.get_paths_info("alice/ranges", ["blob.bin", "sub", "missing.txt"])
    assert [(type(i).__name__, i.path) for i in infos] == [
        ("RepoFile", "blob.bin"),
        ("RepoFolder", "sub"),
    ]
    assert infos[0].lfs.sha256 == sha256(data)
    # a folder's oid is the same whether asked by paths-info or listed in the tree
    folders = {e.path: e.tree_id for e in api.list_repo_tree("alice/ranges", recursive=True)
               if type(e).__name__ == "RepoFolder"}
    asked = api.get_paths_info("alice/ranges", ["sub/dir", "sub", "sub/dir/deep.txt", "sub/d"])
    assert {i.path: getattr(i, "tree_id", None) for i in asked} == {
        **folders, "sub/dir/deep.txt": None,
    }
    top = {e.path for e in api.list_repo_tree("alice/ranges")}
    assert top == {".gitattributes", "blob.bin", "hello.txt", "sub"}
    assert {e.path for e in api.list_repo_tree("alice/ranges", path_in_repo="sub")} == {"sub/dir"}


def test_commits_delete_files_and_folders(hub: HubServer) -> None:
    api = hub.api(hub.alice)
    api.create_repo("alice/deletions", exist_ok=True)
    adds = [CommitOperationAdd(p, p.encode())
            for p in ("keep.txt", "gone.txt", "sub/a.txt", "sub/deep/b.txt", "sub-x/c.txt")]
    first = api.create_commit("alice/deletions", adds, commit_message="files").oid
    api.create_commit(
        "alice/deletions",
        [CommitOperationDelete("gone.txt"), CommitOperationDelete("sub/")],
        commit_message="deletions",
    )
    assert sorted(api.list_repo_files("alice/deletions")) == [
        ".gitattributes", "keep.txt", "sub-x/c.txt",
    ]
    assert "sub/deep/b.txt" in api.list_repo_files("alice/deletions", revision=first)
    with pytest.raises(hf_errors.EntryNotFoundError):
        api.create_commit(
            "alice/deletions", [CommitOperationDelete("sub/")], commit_message="again"
        )
    assert len(api.list_repo_commits("alice/deletions")) == 3  # the refused one left no commit


def test_lfs_uploads_are_signed_checked_and_limited(hub: HubServer, tmp_path: Path) -> None:
    api = hub.api(hub.alice)
    api.create_repo("alice/lfs", exist_ok=True)
    payload = b"real bytes " * 100
    oid = sha256(payload)
    batch = httpx.post(
        f"{hub.url}/alice/lfs.git/info/lfs/objects/batch",
        json={
            "operation": "upload",
            "transfers": ["basic"],
            "hash_algo": "sha256",
            "objects": [{"oid": oid, "size": len(payload)}],
        },
        headers={**auth(hub.alice), "content-type": "application/vnd.git-lfs+json"},
    )
    assert batch.status_code == 200
    href = batch.json()["objects"][0]["actions"]["upload"]["href"]
    assert href.startswith(hub.url)
    # anonymous batch is refused
    assert (
        httpx.post(
            f"{hub.url}/alice/lfs.git/info/lfs/objects/batch",
            json={"operation": "upload", "objects": []},
        ).status_code
        == 401
    )
    # tampered signature / other oid: 403; wrong bytes: 400 and nothing stored
    assert httpx.put(href.replace("sig=", "sig=0"), content=payload).status_code == 403
    other = "b" * 64
    assert httpx.put(href.replace(oid, other), content=payload).status_code == 403
    wrong = payload[:-1] + b"!"
    r = httpx.put(href, content=wrong)
    assert r.status_code == 400 and "sha256" in r.headers["x-error-message"]
    assert not any(p.name == oid for p in hub.blob_files())
    assert httpx.put(href, content=payload).status_code == 200
    assert any(p.name == oid for p in hub.blob_files())
    # oversize files are refused by the batch endpoint, and the client surfaces it
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\0" * (MAX_UPLOAD + 1))
    with pytest.raises((hf_errors.HfHubHTTPError, ValueError, RuntimeError)):
        api.upload_file(
            path_or_fileobj=str(big), path_in_repo="big.safetensors", repo_id="alice/lfs"
        )
    # an oversize regular (base64-in-commit) file is refused too
    with pytest.raises(hf_errors.HfHubHTTPError) as exc:
        api.upload_file(
            path_or_fileobj=b"a" * (MAX_UPLOAD + 1), path_in_repo="big.txt", repo_id="alice/lfs"
        )
    assert exc.value.response.status_code == 413
    files = api.list_repo_files("alice/lfs")
    assert "big.safetensors" not in files and "big.txt" not in files


def test_upload_killed_halfway_leaves_nothing(hub: HubServer) -> None:
    api = hub.api(hub.alice)
    api.create_repo("alice/killed", exist_ok=True)
    payload = bytes(range(256)) * 4096  # 1 MiB
    oid = sha256(payload)
    batch = httpx.post(
        f"{hub.url}/alice/killed.git/info/lfs/objects/batch",
        json={"operation": "upload", "objects": [{"oid": oid, "size": len(payload)}]},
        headers=auth(hub.alice),
    ).json()
    href = urlparse(batch["objects"][0]["actions"]["upload"]["href"])
    blobs_before, commits_before = count_rows(hub, "hub_blobs"), count_rows(hub, "hub_commits")
    head_before = api.model_info("alice/killed").sha
    with socket.create_connection((href.hostname, href.port)) as sock:
        request = (
            f"PUT {href.path}?{href.query} HTTP/1.1\r\nHost: {href.netloc}\r\n"
            f"Content-Length: {len(payload)}\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        sock.sendall(request.encode() + payload[: len(payload) // 3])
        time.sleep(0.3)
    # the committing client would now refer to the object: refused, nothing created
    r = _commit(
        hub,
        "alice/killed",
        [
            HEADER,
            {
                "key": "lfsFile",
                "value": {
                    "path": "w.safetensors",
                    "algo": "sha256",
                    "oid": oid,
                    "size": len(payload),
                },
            },
        ],
    )
    assert r.status_code == 400
    deadline = time.monotonic() + 10
    while hub.temp_files() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hub.temp_files() == []
    assert not any(p.name == oid for p in hub.blob_files())
    assert count_rows(hub, "hub_blobs") == blobs_before
    assert count_rows(hub, "hub_commits") == commits_before
    assert api.model_info("alice/killed").sha == head_before


def test_twenty_concurrent_uploaders_and_downloaders(hub: HubServer, tmp_path: Path) -> None:
    api = hub.api(hub.alice)
    for repo in ("alice/crowd-a", "alice/crowd-b"):
        api.create_repo(repo, exist_ok=True)
    payloads = {i: (f"writer {i} ".encode() * 5000) + bytes([i]) for i in range(20)}
    errors: list[BaseException] = []

    def upload(i: int) -> None:
        try:
            repo = "alice/crowd-a" if i % 2 else "alice/crowd-b"  # ten writers race on each repo
            hub.api(hub.alice).upload_file(
                path_or_fileobj=payloads[i], path_in_repo=f"w{i}.safetensors", repo_id=repo
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for repo, parity in (("alice/crowd-a", 1), ("alice/crowd-b", 0)):
        files = set(api.list_repo_files(repo))
        assert {f"w{i}.safetensors" for i in range(20) if i % 2 == parity} <= files
        # every racing commit became its own revision: initial + 10
        assert len(api.list_repo_commits(repo)) == 11

    results: dict[int, bytes] = {}

    def download(i: int) -> None:
        try:
            repo = "alice/crowd-a" if i % 2 else "alice/crowd-b"
            path = hf_hub_download(
                repo,
                f"w{i}.safetensors",
                endpoint=hub.url,
                token=False,
                cache_dir=tmp_path / f"cache{i % 3}",
            )
            results[i] = Path(path).read_bytes()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=download, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(sha256(results[i]) == sha256(payloads[i]) for i in range(20))


def test_broken_adapter_is_stored_but_not_indexed(
    hub: HubServer, tmp_path: Path, hf_cache: Path
) -> None:
    folder = make_adapter(tmp_path / "broken", config_rank=8)  # config says r=8, tensors are r=4
    api = hub.api(hub.alice)
    api.create_repo("alice/broken-adapter", exist_ok=True)
    api.upload_folder(repo_id="alice/broken-adapter", folder_path=folder)
    path = hf_hub_download(
        "alice/broken-adapter",
        "adapter_model.safetensors",
        endpoint=hub.url,
        cache_dir=hf_cache,
        token=False,
    )
    assert Path(path).read_bytes() == (folder / "adapter_model.safetensors").read_bytes()
    store = RegistryStore(make_engine(hub.db_url))
    from loradex.errors import ModuleNotFound

    with pytest.raises(ModuleNotFound):
        store.get_module("alice/broken-adapter", source="local")
    assert "not indexed" in hub.log_path.read_text()


def test_racing_commits_on_one_parent_one_wins_the_rest_get_412(hub: HubServer) -> None:
    api = hub.api(hub.alice)
    api.create_repo("alice/race", exist_ok=True)
    head = api.model_info("alice/race").sha
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def commit(i: int) -> None:
        barrier.wait()
        try:
            hub.api(hub.alice).create_commit(
                "alice/race",
                [CommitOperationAdd(f"r{i}.txt", f"{i}".encode())],
                commit_message=f"racer {i}",
                parent_commit=head,
            )
            statuses.append(200)
        except hf_errors.HfHubHTTPError as exc:
            statuses.append(exc.response.status_code)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [412] * 7
    files = [f for f in api.list_repo_files("alice/race") if f.startswith("r")]
    assert len(files) == 1 and len(api.list_repo_commits("alice/race")) == 2


def test_deleting_a_repo_while_commits_race_gives_no_5xx(hub: HubServer) -> None:
    """Commits racing a delete + re-create get 200, 404 or 409, never a deadlock or FK 500."""
    api = hub.api(hub.alice)
    api.create_repo("alice/doomed", exist_ok=True)
    statuses: list[int] = []
    barrier = threading.Barrier(7)

    def commit(i: int) -> None:
        barrier.wait()
        with httpx.Client(base_url=hub.url, timeout=60) as client:
            for j in range(6):
                line = {
                    "key": "file",
                    "value": {"path": f"f{i}-{j}.txt", "content": "eA==", "encoding": "base64"},
                }
                body = "\n".join(json.dumps(x) for x in (HEADER, line))
                r = client.post(
                    "/api/models/alice/doomed/commit/main",
                    content=body,
                    headers={**auth(hub.alice), "content-type": "application/x-ndjson"},
                )
                statuses.append(r.status_code)

    def delete_and_recreate() -> None:
        barrier.wait()
        with httpx.Client(base_url=hub.url, timeout=60) as client:
            steps = (("DELETE", "/api/repos/delete"), ("POST", "/api/repos/create"))
            for _ in range(4):
                for method, path in steps:
                    r = client.request(
                        method, path, headers=auth(hub.alice),
                        json={"name": "doomed", "organization": "alice"},
                    )
                    statuses.append(r.status_code)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(6)]
    threads.append(threading.Thread(target=delete_and_recreate))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s < 500 for s in statuses), sorted(statuses)
    assert set(statuses) <= {200, 404, 409}, sorted(statuses)
    # what survives is a whole repo: its head is readable and every listed file downloads
    info = api.model_info("alice/doomed", files_metadata=True)
    for sibling in info.siblings or []:
        r = httpx.get(f"{hub.url}/alice/doomed/resolve/{info.sha}/{sibling.rfilename}")
        assert r.status_code == 200 and len(r.content) == sibling.size
