"""``loradex add/search/show/db`` end to end, in-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import sqlalchemy as sa

from loradex.cli import main
from tests.support.adapters import write_lora_adapter


class Run:
    """Runs ``loradex --db URL ...`` in-process and returns (exit code, stdout, stderr)."""

    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = url
        self.capsys = capsys

    def __call__(self, *args: str, db: bool = True) -> tuple[int, str, str]:
        self.capsys.readouterr()
        argv = (["--db", self.url] if db else []) + list(args)
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        out, err = self.capsys.readouterr()
        code = exit_info.value.code
        return (code if isinstance(code, int) else 1), out, err

    def json(self, *args: str) -> dict:
        code, out, err = self(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    def module_count(self) -> int:
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table("modules"):
                    return 0
                return int(conn.scalar(sa.text("SELECT count(*) FROM modules")) or 0)
        finally:
            engine.dispose()


@pytest.fixture
def run(db_url: str, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(db_url, capsys)


@pytest.fixture
def adapters(tmp_path: Path) -> dict[str, Path]:
    """Three real adapter folders: two compatible (ranks 8 and 16), one on another base."""
    return {
        "past": write_lora_adapter(
            tmp_path / "past-tense", rank=8,
            front_matter={"license": "apache-2.0", "tags": ["grammar", "en"],
                          "loradex": {"task_name": "past_tense", "task_category": "grammar",
                                      "lineage": [{"repo_id": "bob/base-grammar",
                                                   "revision": "f" * 40, "weight": 0.5}]}},
            card="# Past tense\n\nRewrites English sentences in the past tense.\n",
        ),
        "plural": write_lora_adapter(
            tmp_path / "plural", rank=16,
            front_matter={"license": "mit", "tags": ["grammar"],
                          "loradex": {"task_name": "plural", "task_category": "grammar"}},
            card="# Plural\n\nPuts nouns in the plural.\n",
        ),
        "llama": write_lora_adapter(
            tmp_path / "llama", rank=8, targets=("q_proj", "k_proj"),
            base_model="https://huggingface.co/meta-llama/Llama-2-7b-hf",
            front_matter={"tags": ["summarization"]}, card="Summaries of news.\n",
        ),
    }


def test_add_search_show(run: Run, adapters: dict[str, Path]) -> None:
    code, out, err = run("add", str(adapters["past"]), "--id", "alice/past-tense")
    assert code == 0, err
    assert out.strip() == (
        "added alice/past-tense: LoRA r=8 on HuggingFaceTB/SmolLM2-135M-Instruct, "
        f"targets q_proj,v_proj, 3 files ({out.split('(')[-1].strip()}"
    )
    assert run("add", str(adapters["past"]), "--id", "alice/past-tense")[1].startswith("updated")
    assert run("add", str(adapters["plural"]))[0] == 0
    assert run("add", str(adapters["llama"]), "--id", "carol/news")[0] == 0

    doc = run.json("search")
    assert doc["version"] == 1 and doc["total"] == 3 and doc["sort"] == "downloads"
    assert doc["total_is_exact"] is True and (doc["offset"], doc["limit"]) == (0, 20)
    assert {r["repo_id"] for r in doc["results"]} == {"alice/past-tense", "local/plural",
                                                     "carol/news"}
    first = next(r for r in doc["results"] if r["repo_id"] == "alice/past-tense")
    assert first["task"] == {"name": "past_tense", "category": "grammar", "dataset": None,
                             "language": None,
                             "description": "Rewrites English sentences in the past tense."}
    assert first["lineage"] == [{"parent_repo_id": "bob/base-grammar",
                                 "parent_revision": "f" * 40, "weight": 0.5, "role": "parent"}]
    assert "card_text" not in first

    def ids(*args: str) -> list[str]:
        return [r["repo_id"] for r in run.json("search", *args)["results"]]

    assert ids("past", "tense") == ["alice/past-tense"]
    assert ids("--base-model", "meta-llama/llama-2-7b-hf") == ["carol/news"]
    assert ids("--rank", "16") == ["local/plural"]
    assert sorted(ids("--min-rank", "8", "--max-rank", "8")) == ["alice/past-tense",
                                                                  "carol/news"]
    assert ids("--target", "k_proj", "--target", "q_proj") == ["carol/news"]
    assert ids("--tag", "grammar", "--tag", "en") == ["alice/past-tense"]
    assert ids("--task", "plural") == ["local/plural"]
    assert ids("--author", "alice") == ["alice/past-tense"]
    assert ids("--license", "MIT") == ["local/plural"]
    assert len(ids("--peft-type", "lora")) == 3
    assert ids("--sort", "rank", "--limit", "1", "--offset", "2") == ["local/plural"]

    compat = run.json("search", "--compatible-with", "alice/past-tense")
    assert [(r["repo_id"], r["rank_matches"]) for r in compat["results"]] == [
        ("local/plural", False)]

    code, out, _ = run("search", "--compatible-with", "alice/past-tense")
    assert code == 0
    header, row, footer = out.strip().splitlines()
    assert header.split() == ["REPO", "ID", "BASE", "MODEL", "R", "TARGETS", "TASK",
                              "DOWNLOADS", "LIKES", "SAME", "R"]
    assert row.split()[:3] == ["local/plural", "HuggingFaceTB/SmolLM2-135M-Instruct", "16"]
    assert row.split()[-1] == "no"
    assert footer == "1-1 of 1 (sorted by downloads)"
    assert run("search", "nothing-matches-this")[1].strip() == "no modules match"

    code, out, _ = run("show", "alice/past-tense")
    assert code == 0
    assert "  base model    HuggingFaceTB/SmolLM2-135M-Instruct\n" in out
    assert "  rank          8  alpha 16  dropout 0.05\n" in out
    assert "files (3):" in out and "adapter_model.safetensors" in out
    sha = run.json("show", "alice/past-tense")["files"][2]["sha256"]
    assert sha in out
    assert f"  parent    bob/base-grammar@{'f' * 40}  weight 0.5" in out
    assert "card:\n  # Past tense\n" in out
    shown = run.json("show", "alice/past-tense")
    assert shown["card_text"].startswith("# Past tense")
    assert shown["base_model_raw"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def _truncated(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])


def _malformed_header(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    data = weights.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    weights.write_bytes(data[:8] + b"{" * length + data[8 + length :])


def _pickle_only(folder: Path) -> None:
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")


def _wrong_rank(folder: Path) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 4
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _wrong_targets(folder: Path) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "k_proj", "v_proj"]
    (folder / "adapter_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_truncated, "adapter_model.safetensors: truncated safetensors file"),
        (_malformed_header, "adapter_model.safetensors: safetensors header is not valid JSON"),
        (_pickle_only, "adapter_model.bin: pickle weights only"),
        (_wrong_rank, "has rank 8 (lora_A [8, 32], lora_B [32, 8]) but adapter_config.json "
                      "says r=4"),
        (_wrong_targets, "targets ['k_proj'] have no tensors"),
    ],
)
def test_bad_adapters_are_refused_and_nothing_is_written(
    run: Run, adapters: dict[str, Path], breakage, message: str
) -> None:
    assert run("add", str(adapters["past"]), "--id", "alice/m")[0] == 0
    before = run.json("show", "alice/m")
    breakage(adapters["past"])
    code, out, err = run("add", str(adapters["past"]), "--id", "alice/m")
    assert code == 4
    assert out == ""
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert run.json("show", "alice/m") == before
    assert run.module_count() == 1


def test_refused_first_add_leaves_no_module(run: Run, adapters: dict[str, Path]) -> None:
    _pickle_only(adapters["past"])
    assert run("add", str(adapters["past"]))[0] == 4
    assert run.module_count() == 0


def test_user_errors_are_one_line(run: Run, adapters: dict[str, Path]) -> None:
    code, _, err = run("show", "nobody/nothing")
    assert code == 16 and err.startswith("error: no registry at ")  # nothing created yet
    assert run("add", str(adapters["plural"]))[0] == 0
    code, _, err = run("show", "nobody/nothing")
    assert (code, err) == (3, "error: module 'nobody/nothing' is not in the registry\n")
    code, _, err = run("add", str(adapters["past"]), "--id", "not an id")
    assert code == 11 and "not a repo id of the form namespace/name" in err
    code, _, err = run("search", "--min-rank", "16", "--max-rank", "8")
    assert code == 2 and "--min-rank is greater than --max-rank" in err
    code, _, err = run("search", "--sort", "relevance")
    assert code == 2 and "needs search TEXT" in err
    code, _, err = run("search", "--compatible-with", "nobody/nothing")
    assert code == 3
    # psycopg's refusal spans two lines ("... Is the server running ...?"); ours is one
    unreachable = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    code, _, err = run("--db", unreachable, "search", "x", db=False)
    assert code == 12 and err.startswith("error: cannot reach postgresql") and err.count("\n") == 1


def test_db_commands(run: Run) -> None:
    code, out, _ = run("db", "current")
    assert code == 0 and "empty (run `loradex db upgrade`" in out
    code, out, _ = run("db", "upgrade")
    assert code == 0 and "upgraded from empty to " in out
    code, out, _ = run("db", "current")
    assert code == 0 and out.strip().endswith("(head)")


def test_default_database_is_created_on_first_write(
    loradex_home: Path, capsys: pytest.CaptureFixture[str], adapters: dict[str, Path]
) -> None:
    run = Run(f"sqlite:///{loradex_home / 'registry.db'}", capsys)
    code, out, err = run("search", db=False)  # read-only: says so, creates nothing
    assert (code, out) == (16, "") and err.startswith("error: no registry at sqlite:///")
    assert not (loradex_home / "registry.db").exists()
    assert run("add", str(adapters["plural"]), db=False)[0] == 0
    assert (loradex_home / "registry.db").is_file()
    assert run("search", db=False)[0] == 0
    assert run("db", "current", db=False)[1].strip().endswith("(head)")
    assert run.module_count() == 1


def test_search_like_ranks_by_signature_and_db_sign_backfills(
        run: Run, tmp_path: Path) -> None:
    from registry.embedders import load_embedder
    from registry.signatures import data_signature, write_signature_file

    embedder = load_embedder()
    tasks = {
        "tense": ["Today I walk. Yesterday I", "Today I sing. Yesterday I"],
        "facts": ["Claim: masks reduce the spread of the virus. True or false?",
                  "Claim: vaccines contain microchips. True or false?"],
    }
    for name, inputs in tasks.items():
        folder = write_lora_adapter(tmp_path / name, card="")
        write_signature_file(folder, data_signature(embedder, inputs))
        code, _out, err = run("add", str(folder), "--id", f"lab/{name}")
        assert code == 0, err
    few = tmp_path / "few.jsonl"
    few.write_text('{"input": "Today I jump. Yesterday I", "target": "jumped"}\n')
    code, out, err = run("search", "--like", str(few))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].startswith("lab/tense") and " data " in lines[1]
    doc = run.json("search", "--like", str(few), "--limit", "1")
    assert [r["repo_id"] for r in doc["results"]] == ["lab/tense"]
    assert doc["results"][0]["signature"] == "data" and doc["embedder"] == embedder.name
    assert doc["total"] == 2 and 0 < doc["results"][0]["similarity"] <= 1

    # One line for a bad examples file, and --like takes no TEXT.
    (tmp_path / "empty.jsonl").write_text("\n")
    code, _out, err = run("search", "--like", str(tmp_path / "empty.jsonl"))
    assert code == 6 and err.count("\n") == 1 and "no examples" in err
    code, _out, err = run("search", "past", "--like", str(few))
    assert code == 2

    # A registry whose signatures are gone: scored on card text made now, then backfilled.
    engine = sa.create_engine(run.url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM module_signatures"))
    engine.dispose()
    doc = run.json("search", "--like", str(few))
    assert {r["signature"] for r in doc["results"]} == {"card (computed now)"}
    code, out, err = run("db", "sign")
    assert code == 0 and "signed 2 module(s)" in out, err
    doc = run.json("search", "--like", str(few))
    assert {r["signature"] for r in doc["results"]} == {"card"}
    code, out, err = run("db", "sign")
    assert "signed 0 module(s)" in out
