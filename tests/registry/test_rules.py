"""One rule, one place: the front-matter parser, the LFS rule, the repo-id check, the LoRA key
pattern, as_list and file_sha256, and `loradex add` agreeing with `loradex serve` on repo ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from loradex.cli import main
from loradex.documents import as_list
from loradex.errors import ConfigError, InvalidAdapter
from loradex.files import file_sha256
from registry.adapter_files import list_folder_files
from registry.cards import parse_card, parse_front_matter
from registry.lfs import LFS_SIZE_THRESHOLD, is_lfs_path
from registry.lora_tensors import LORA_KEY, strip_peft_prefix
from registry.repo_ids import check_repo_id, check_repo_name
from registry.server.errors import HubHTTPError
from registry.server.validation import check_repo_id as server_check_repo_id

# --------------------------------------------------------------------------- front matter

CARD = "---\nlicense: mit\ntags:\n- a\n---\n# Title\n\nBody.\n"


@pytest.mark.parametrize(
    "text",
    [CARD, "\ufeff" + CARD, CARD.replace("\n", "\r\n"), "\ufeff" + CARD.replace("\n", "\r\n")],
    ids=["plain", "bom", "crlf", "bom+crlf"],
)
def test_front_matter_survives_a_bom_and_crlf(text: str) -> None:
    front, body = parse_card(text)
    assert front == {"license": "mit", "tags": ["a"]}
    assert body.replace("\r\n", "\n") == "# Title\n\nBody."
    assert parse_front_matter(text) == front


def test_the_strict_reading_is_built_on_the_same_parser() -> None:
    assert parse_front_matter("# no front matter\n") == {}
    assert parse_front_matter("---\n---\nbody") == {}
    unclosed = "---\nlicense: mit\n"
    assert parse_card(unclosed) == ({}, unclosed.strip())  # add reads it as all body
    with pytest.raises(ValueError, match="not closed"):
        parse_front_matter(unclosed)  # the server's validate-yaml refuses it
    for bad in ("---\nlicense: [unclosed\n---\n", "---\n- a\n---\n", "---\na: &x 1\nb: *x\n---\n"):
        with pytest.raises(InvalidAdapter, match="YAML front matter is malformed"):
            parse_card(bad)
        with pytest.raises(ValueError, match=r"^invalid YAML front matter"):
            parse_front_matter(bad)


# --------------------------------------------------------------------------- LFS


@pytest.mark.parametrize(
    ("path", "size", "lfs"),
    [
        ("adapter_model.safetensors", 10, True),
        ("sub/dir/model.onnx", 10, True),
        ("optimizer.pkl", 10, True),
        ("training_args.bin", 10, True),
        ("WEIGHTS.SAFETENSORS", 10, True),
        ("adapter_config.json", 10, False),
        ("README.md", LFS_SIZE_THRESHOLD - 1, False),
        ("README.md", LFS_SIZE_THRESHOLD, True),
        ("data.jsonl", 50 * 1024 * 1024, True),
    ],
)
def test_lfs_rule(path: str, size: int, lfs: bool) -> None:
    assert is_lfs_path(path, size) is lfs


def test_add_records_lfs_by_the_same_rule(tmp_path: Path) -> None:
    for name in ("model.onnx", "state.pkl", "config.json", "notes.txt"):
        (tmp_path / name).write_bytes(b"x" * 16)
    files = {f.path: f.lfs for f in list_folder_files(tmp_path)}
    assert files == {
        "config.json": False, "model.onnx": True, "notes.txt": False, "state.pkl": True
    }


# --------------------------------------------------------------------------- repo ids

VALID = ["alice/past-tense", "Org_1/model.v2.1", "a/b", "a_/b_", "x" * 96 + "/" + "y" * 96]
INVALID = [
    "a--b/x",
    "a/x--y",
    "a/..x",
    "a/x..y",
    "café/x",
    "alice/naïve",
    "alice/ｆｕｌｌ",
    "a/" + "x" * 97,
    "x" * 97 + "/a",
    "-a/x",
    ".a/x",
    "_a/x",
    "a/x.git",
    "a.git/x",
    "a/x.",
    "a/x-",  # the Hub client's rule, which the server's old check_name let through
    "a-/x",
    "a b/x",
    "a/x\n",  # a regex `$` would let a trailing newline through
]


@pytest.mark.parametrize("repo_id", VALID)
def test_check_repo_id_accepts_normal_ids(repo_id: str) -> None:
    assert check_repo_id(repo_id) == repo_id


@pytest.mark.parametrize("repo_id", [*INVALID, "alice", "a/b/c", "/x", "a/"])
def test_check_repo_id_refuses(repo_id: str) -> None:
    with pytest.raises(ConfigError, match="is not a repo id of the form namespace/name"):
        check_repo_id(repo_id)


def test_one_half_is_checked_with_its_name() -> None:
    assert check_repo_name("alice", "namespace") == "alice"
    with pytest.raises(ConfigError, match="invalid namespace 'a--b'"):
        check_repo_name("a--b", "namespace")
    with pytest.raises(ConfigError, match="at most 96 characters"):
        check_repo_name("x" * 97)


def _add_accepts(repo_id: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> bool:
    """Whether `loradex add FOLDER --id ID` gets past the id (the empty folder then fails)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--db", f"sqlite:///{folder.parent / 'registry.db'}", "add", str(folder),
              "--id", repo_id])
    err = capsys.readouterr().err
    code = exit_info.value.code
    assert code in (ConfigError.exit_code, InvalidAdapter.exit_code), err
    return code == InvalidAdapter.exit_code


def _server_accepts(repo_id: str) -> bool:
    try:
        server_check_repo_id(*repo_id.split("/"))
    except HubHTTPError:
        return False
    return True


@pytest.mark.parametrize("repo_id", [*VALID, *INVALID])
def test_add_and_serve_agree_on_repo_ids(
    repo_id: str, tmp_path: Path, loradex_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    assert _add_accepts(repo_id, folder, capsys) == _server_accepts(repo_id)


# --------------------------------------------------------------------------- the rest


def test_lora_key_pattern() -> None:
    match = LORA_KEY.match("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
    assert match and match["side"] == "A" and not match["embedding"]
    assert strip_peft_prefix(match["module"]) == "model.layers.0.self_attn.q_proj"
    match = LORA_KEY.match("x.v_proj.lora_B.default.weight")
    assert match and (match["module"], match["side"]) == ("x.v_proj", "B")
    match = LORA_KEY.match("base_model.model.embed_tokens.lora_embedding_A")
    assert match and match["embedding"]
    assert LORA_KEY.match("model.layers.0.self_attn.q_proj.weight") is None


def test_as_list() -> None:
    assert as_list(None) == []
    assert as_list("mit") == ["mit"]
    assert as_list(["a", None, 3]) == ["a", "3"]
    assert as_list(("a",)) == ["a"]
    assert as_list(2024) == ["2024"]


def test_file_sha256(tmp_path: Path) -> None:
    data = b"lora" * 300_000
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
