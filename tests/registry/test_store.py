"""RegistryStore on real databases: upserts, look-ups, search, compatibility, sync state."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from loradex.errors import DatabaseConflict, ModuleNotFound
from registry.entities import LineageEdge, Module, ModuleFile, SearchPage, SearchQuery
from registry.store import RegistryStore

Factory = Callable[..., Module]


def _ids(modules: list[Module]) -> list[str]:
    return [m.repo_id for m in modules]


def _row_counts(store: RegistryStore) -> dict[str, int]:
    tables = ["modules", "module_tags", "module_targets", "module_files", "module_lineage",
              "module_fts"]
    with store.engine.connect() as conn:
        return {t: conn.scalar(sa.text(f"SELECT count(*) FROM {t}")) for t in tables}


def test_upsert_round_trips_every_field(store: RegistryStore, module_factory: Factory) -> None:
    module = module_factory(
        "alice/past-tense",
        base_model_raw="/cache/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/x",
        kind="hydra",
        num_heads=4,
        bias="none",
        num_parameters=4096,
        dtype="float32",
        total_size=1234,
        tags=("english", "grammar"),
        dataset="alice/pairs",
        language="en",
        created_at=datetime(2025, 5, 1, 12, 30, tzinfo=UTC),
        card_text="# Past tense\n\nSome text.",
        lineage=(LineageEdge("bob/a", "c" * 40, 0.7, "parent"), LineageEdge("bob/b", None, None)),
    )
    assert store.upsert_module(module) == module
    assert store.get_module("alice/past-tense") == module
    assert store.get_module("alice/past-tense", source="local") == module


def test_upsert_is_idempotent_and_replaces_children(
    store: RegistryStore, module_factory: Factory
) -> None:
    first = module_factory(
        "alice/m", tags=("a", "b"), target_modules=("q_proj", "v_proj"),
        files=(ModuleFile("x.safetensors", 1, None, True), ModuleFile("README.md", 2)),
        lineage=(LineageEdge("bob/a"),),
    )
    store.upsert_module(first)
    counts = _row_counts(store)
    store.upsert_module(first)
    assert _row_counts(store) == counts
    second = dataclasses.replace(
        first, tags=("c",), target_modules=("k_proj",), files=(), lineage=(), rank=4,
        revision="e" * 40,
    )
    assert store.upsert_module(second) == second
    assert _row_counts(store) == {
        "modules": 1, "module_tags": 1, "module_targets": 1, "module_files": 0,
        "module_lineage": 0, "module_fts": 1,
    }
    assert store.search(SearchQuery(tags=("a",))) == []
    assert _ids(store.search(SearchQuery(tags=("c",)))) == ["alice/m"]


def test_values_users_filter_on_are_normalised(
    store: RegistryStore, module_factory: Factory
) -> None:
    stored = store.upsert_module(module_factory(
        "alice/m", base_model="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/",
        tags=("Grammar", "grammar", " EN "), license="Apache-2.0", peft_type="lora",
        target_modules=("v_proj", "q_proj"),
    ))
    assert stored.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert stored.base_model_raw == "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/"
    assert stored.tags == ("en", "grammar")
    assert stored.license == "apache-2.0"
    assert stored.peft_type == "LORA"
    assert stored.target_modules == ("q_proj", "v_proj")
    for base in ("huggingfacetb/smollm2-135m-instruct",
                 "hf.co/HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert _ids(store.search(SearchQuery(base_model=base))) == ["alice/m"]
    # A folder on someone's disk is no Hub id, even one ending in org/name (issue 23).
    local = "/home/x/HuggingFaceTB/SmolLM2-135M-Instruct/"
    assert _ids(store.search(SearchQuery(base_model=local))) == []
    assert _ids(store.search(SearchQuery(tags=("GRAMMAR",), license="APACHE-2.0",
                                         peft_type="Lora"))) == ["alice/m"]


def test_same_repo_from_two_sources(store: RegistryStore, module_factory: Factory) -> None:
    store.upsert_module(module_factory("alice/m", source="local", rank=4))
    store.upsert_module(module_factory("alice/m", source="http://127.0.0.1:9000", rank=8))
    assert store.get_module("alice/m", source="local").rank == 4
    assert store.get_module("alice/m", source="http://127.0.0.1:9000").rank == 8
    assert store.get_module("alice/m").rank == 8  # the most recently indexed one
    assert store.count() == 2
    assert store.count(SearchQuery(source="local")) == 1


def test_missing_module_raises(store: RegistryStore) -> None:
    with pytest.raises(ModuleNotFound, match="'nobody/nothing' is not in the registry"):
        store.get_module("nobody/nothing")
    with pytest.raises(ModuleNotFound):
        store.delete_module("nobody/nothing")
    with pytest.raises(ModuleNotFound):
        store.compatible_with("nobody/nothing")
    with pytest.raises(ModuleNotFound):
        store.search(SearchQuery(compatible_with="nobody/nothing"))


def test_delete_removes_everything(store: RegistryStore, module_factory: Factory) -> None:
    store.upsert_module(module_factory("alice/m", lineage=(LineageEdge("bob/a"),)))
    store.upsert_module(module_factory("alice/n"))
    store.delete_module("alice/m")
    counts = _row_counts(store)
    assert counts["modules"] == counts["module_fts"] == counts["module_lineage"] + 1 == 1
    assert _ids(store.search(SearchQuery(text="past tense"))) == ["alice/n"]


@pytest.fixture
def catalogue(store: RegistryStore, module_factory: Factory) -> RegistryStore:
    """Six modules differing in one thing or two each."""
    store.bulk_upsert([
        module_factory("alice/past-tense", rank=8, downloads=500, likes=3, tags=("grammar", "en"),
                       updated_at=datetime(2026, 3, 1, tzinfo=UTC)),
        module_factory("bob/past-tense-r16", rank=16, downloads=50, likes=9,
                       tags=("grammar",), updated_at=datetime(2026, 4, 1, tzinfo=UTC)),
        module_factory("carol/sentiment", rank=8, downloads=900, likes=1, tags=("classification",),
                       task_name="sentiment", task_category="classification",
                       description="Labels movie reviews as positive or negative.",
                       card_text="Trained on movie reviews.", license="mit", author="carol"),
        module_factory("dave/translation", rank=4, downloads=20, likes=0, tags=("en", "fr"),
                       task_name="translate_fr", task_category="translation",
                       description="English to French.",
                       target_modules=("q_proj", "k_proj", "v_proj", "o_proj")),
        module_factory("erin/llama-tense", rank=8, downloads=5, likes=0,
                       base_model="meta-llama/Llama-2-7b-hf", tags=("grammar",),
                       updated_at=None),
        module_factory("frank/summary", rank=32, downloads=70, likes=4, tags=("summarization",),
                       task_name="summarize", task_category="summarization",
                       description="Summarises news articles.", card_text="Uses the past "
                       "tense sometimes."),
    ])
    return store


def test_filters(catalogue: RegistryStore) -> None:
    def ids(**kw: object) -> list[str]:
        return sorted(_ids(catalogue.search(SearchQuery(**kw))))  # type: ignore[arg-type]

    assert ids(rank=8) == ["alice/past-tense", "carol/sentiment", "erin/llama-tense"]
    assert ids(min_rank=8, max_rank=16) == [
        "alice/past-tense", "bob/past-tense-r16", "carol/sentiment", "erin/llama-tense"]
    assert ids(base_model="meta-llama/Llama-2-7b-hf") == ["erin/llama-tense"]
    assert ids(targets=("o_proj",)) == ["dave/translation"]
    assert ids(targets=("q_proj", "o_proj")) == ["dave/translation"]
    assert len(ids(targets=("q_proj",))) == 6
    assert ids(tags=("grammar", "en")) == ["alice/past-tense"]
    assert ids(tags=("en",)) == ["alice/past-tense", "dave/translation"]
    assert ids(task="classification") == ["carol/sentiment"]
    assert ids(task="translate_fr") == ["dave/translation"]
    assert ids(author="carol") == ["carol/sentiment"]
    assert ids(license="mit") == ["carol/sentiment"]
    assert ids(peft_type="LORA") == ids()
    assert ids(peft_type="IA3") == []
    assert ids(tags=("grammar",), rank=16) == ["bob/past-tense-r16"]


def test_sorting_and_paging(catalogue: RegistryStore) -> None:
    def ids(**kw: object) -> list[str]:
        return _ids(catalogue.search(SearchQuery(**kw)))  # type: ignore[arg-type]

    assert ids()[:3] == ["carol/sentiment", "alice/past-tense", "frank/summary"]
    assert ids(sort="likes")[:2] == ["bob/past-tense-r16", "frank/summary"]
    updated = ids(sort="updated")
    assert updated[0] == "bob/past-tense-r16"
    assert updated[-1] == "erin/llama-tense"  # no date: last
    assert ids(sort="rank") == ["dave/translation", "carol/sentiment", "alice/past-tense",
                                "erin/llama-tense", "bob/past-tense-r16", "frank/summary"]
    page = catalogue.search_page(SearchQuery(limit=2, offset=2))
    assert (page.total, page.total_is_exact) == (6, True)
    assert _ids(list(page.modules)) == ids()[2:4]
    assert catalogue.search_page(SearchQuery(offset=10)) == SearchPage((), 6, True)


def test_count_limit_stops_counting(catalogue: RegistryStore) -> None:
    capped = catalogue.search_page(SearchQuery(limit=2), count_limit=4)
    assert (capped.total, capped.total_is_exact) == (4, False)
    assert _ids(list(capped.modules)) == _ids(catalogue.search(SearchQuery(limit=2)))
    # Past the limit the page is still served: the total is only a lower bound.
    assert len(catalogue.search_page(SearchQuery(offset=5), count_limit=4).modules) == 1
    exact = catalogue.search_page(SearchQuery(tags=("grammar",)), count_limit=4)
    assert (exact.total, exact.total_is_exact) == (3, True)
    assert catalogue.count(SearchQuery(), limit=3) == 3


def test_free_text_ranks_repo_id_and_task_above_card(catalogue: RegistryStore) -> None:
    results = _ids(catalogue.search(SearchQuery(text="past tense")))
    # Every "past tense" module matches; the summariser only through its card text, so last.
    assert set(results) == {"alice/past-tense", "bob/past-tense-r16", "erin/llama-tense",
                            "frank/summary"}
    assert results[-1] == "frank/summary"
    assert _ids(catalogue.search(SearchQuery(text="movie"))) == ["carol/sentiment"]
    assert _ids(catalogue.search(SearchQuery(text="reviews"))) == ["carol/sentiment"]  # stemmed
    assert _ids(catalogue.search(SearchQuery(text="transl"))) == ["dave/translation"]  # prefix
    assert _ids(catalogue.search(SearchQuery(text="summarization"))) == ["frank/summary"]  # tag
    assert catalogue.search(SearchQuery(text="past tense", tags=("classification",))) == []
    assert catalogue.search(SearchQuery(text="zzzzqqq")) == []
    # Punctuation is not query syntax.
    assert _ids(catalogue.search(SearchQuery(text='"movie" (reviews*'))) == ["carol/sentiment"]
    assert catalogue.count(SearchQuery(text="past tense", rank=8)) == 2


def test_text_query_can_sort_by_other_keys(catalogue: RegistryStore) -> None:
    by_downloads = _ids(catalogue.search(SearchQuery(text="past tense", sort="downloads")))
    assert by_downloads == ["alice/past-tense", "frank/summary", "bob/past-tense-r16",
                            "erin/llama-tense"]


def test_compatible_with(catalogue: RegistryStore) -> None:
    found = catalogue.compatible_with("alice/past-tense")
    # Same base model and the same target set (q_proj, v_proj); equal rank first.
    assert [(c.module.repo_id, c.rank_matches) for c in found] == [
        ("carol/sentiment", True),
        ("frank/summary", False),
        ("bob/past-tense-r16", False),
    ]
    assert all(c.reference_repo_id == "alice/past-tense" for c in found)
    assert catalogue.compatible_with("erin/llama-tense") == []
    assert _ids(catalogue.search(SearchQuery(compatible_with="alice/past-tense", rank=8))) == [
        "carol/sentiment"]
    assert len(catalogue.compatible_with("alice/past-tense", limit=1)) == 1


def test_bulk_upsert_replaces_and_dedupes(store: RegistryStore, module_factory: Factory) -> None:
    modules = [module_factory(f"org/m{i}", downloads=i) for i in range(25)]
    assert store.bulk_upsert(modules, batch_size=10) == 25
    assert store.bulk_upsert([module_factory("org/m1", rank=4),
                              module_factory("org/m1", rank=2)]) == 1
    assert store.count() == 25
    assert store.get_module("org/m1").rank == 2
    assert _row_counts(store)["module_fts"] == 25


def test_failed_write_leaves_previous_version(
    store: RegistryStore, module_factory: Factory
) -> None:
    store.upsert_module(module_factory("alice/m", rank=8))
    broken = module_factory("alice/m", rank=4, files=(ModuleFile("x", None),))  # type: ignore[arg-type]
    with pytest.raises(DatabaseConflict):
        store.upsert_module(broken)
    assert store.get_module("alice/m").rank == 8
    assert _row_counts(store)["module_fts"] == 1


def test_sync_state(store: RegistryStore) -> None:
    assert store.get_sync_state("http://hub", "alice/m") is None
    first = store.set_sync_state("http://hub", "alice/m", last_sha="a" * 40)
    assert (first.status, first.last_sha, first.error) == ("ok", "a" * 40, None)
    assert first.synced_at is not None and first.synced_at.tzinfo is not None
    store.set_sync_state("http://hub", "alice/m", last_sha="b" * 40, status="skipped",
                         error="pickle weights only")
    state = store.get_sync_state("http://hub", "alice/m")
    assert state is not None
    assert (state.status, state.last_sha, state.error) == ("skipped", "b" * 40,
                                                          "pickle weights only")
    store.set_sync_state("http://other", "alice/m", last_sha=None, status="error", error="503")
    assert [s.repo_id for s in store.sync_states("http://hub")] == ["alice/m"]
    assert store.get_sync_state("http://other", "alice/m").status == "error"  # type: ignore[union-attr]


def test_orm_rows_map_to_the_same_entities(store: RegistryStore, module_factory: Factory) -> None:
    from sqlalchemy.orm import Session

    from registry.models import ModuleRow

    module = store.upsert_module(module_factory(
        "alice/m", card_text="# Card", lineage=(LineageEdge("bob/a", None, 0.5),),
        tags=("a", "b"), files=(ModuleFile("a.json", 3), ModuleFile("b.bin", 4, None, True)),
    ))
    with Session(store.engine) as session:
        row = session.scalars(sa.select(ModuleRow)).one()
        assert row.to_entity() == module


def test_relevance_pages_and_totals(catalogue: RegistryStore) -> None:
    everything = catalogue.search(SearchQuery(text="past tense"))
    first = catalogue.search_page(SearchQuery(text="past tense", limit=2), count_limit=1)
    # Ranking sees every match, so the total is exact even under a count limit.
    assert (first.total, first.total_is_exact) == (4, True)
    assert list(first.modules) == everything[:2]
    second = catalogue.search_page(SearchQuery(text="past tense", limit=2, offset=2))
    assert list(second.modules) == everything[2:]
    beyond = catalogue.search_page(SearchQuery(text="past tense", offset=9))
    assert (beyond.modules, beyond.total) == ((), 4)
    filtered = catalogue.search_page(SearchQuery(text="past tense", rank=8, limit=1))
    assert (filtered.total, _ids(list(filtered.modules))) == (2, ["alice/past-tense"])


def test_a_source_filter_holds_with_one_source_or_several(
    catalogue: RegistryStore, module_factory: Factory
) -> None:
    """Where every module has the asked source the filter is skipped (a no-op); once another
    source exists it filters again, with text and without."""
    source = catalogue.search(SearchQuery(limit=1))[0].source
    for text in ("past tense", None):
        alone = catalogue.search_page(SearchQuery(text=text, source=source))
        assert alone.total == catalogue.count(SearchQuery(text=text))
    catalogue.upsert_module(module_factory("zed/past-tense", source="http://elsewhere"))
    catalogue.upsert_module(module_factory("aaa/past-tense", source="a-first"))
    for text in ("past tense", None):
        mine = catalogue.search_page(SearchQuery(text=text, source=source))
        assert {m.source for m in mine.modules} == {source}
        assert mine.total == catalogue.count(SearchQuery(text=text)) - 2
        other = catalogue.search_page(SearchQuery(text=text, source="http://elsewhere"))
        assert _ids(list(other.modules)) == ["zed/past-tense"] and other.total == 1
    assert catalogue.search(SearchQuery(source="nowhere")) == []


def test_sync_states_in_bulk_and_forgetting_repos(
    store: RegistryStore, module_factory: Factory
) -> None:
    from registry.entities import SyncState

    for repo in ("alice/a", "alice/b"):
        store.upsert_module(module_factory(repo, source="http://hub"))
    store.upsert_module(module_factory("alice/a", source="http://other"))
    store.set_sync_states([
        SyncState("http://hub", "alice/a", "1" * 40),
        SyncState("http://hub", "alice/b", "2" * 40, status="skipped", error="bad"),
        SyncState("http://hub", "alice/a", "3" * 40),  # the last one per repo wins
    ])
    states = {s.repo_id: s for s in store.sync_states("http://hub")}
    assert states["alice/a"].last_sha == "3" * 40 and states["alice/b"].status == "skipped"
    assert store.forget_repos("http://hub", ["alice/a", "alice/never-synced"]) == 1
    assert [s.repo_id for s in store.sync_states("http://hub")] == ["alice/b"]
    with pytest.raises(ModuleNotFound):
        store.get_module("alice/a", source="http://hub")
    assert store.get_module("alice/a", source="http://other").source == "http://other"
