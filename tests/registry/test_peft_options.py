"""What real-world adapters record beyond rank and targets: PEFT options, template cards,
local-path base models (issue 23, part 6)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from loradex.errors import InvalidAdapter
from registry.adapter_files import inspect_adapter_folder
from registry.cards import first_paragraph
from registry.entities import LineageEdge, Module, SearchQuery
from registry.normalize import base_model_key, is_local_path
from registry.peft_options import read_peft_options
from registry.store import RegistryStore
from tests.support.adapters import write_lora_adapter

# The body huggingface_hub's model card template gives an adapter saved by PEFT with nothing
# filled in (trimmed; as PEFT 0.13 writes it).
PEFT_TEMPLATE_CARD = """# Model Card for Model ID

<!-- Provide a quick summary of what the model is/does. -->



## Model Details

### Model Description

<!-- Provide a longer summary of what this model is. -->



- **Developed by:** [More Information Needed]
- **Funded by [optional]:** [More Information Needed]
- **Model type:** [More Information Needed]

## Uses

<!-- Address questions around how the model is intended to be used, including the foreseeable
users of the model and those affected by the model. -->

### Direct Use

[More Information Needed]

### Framework versions

- PEFT 0.13.2
"""


def test_peft_options_are_read_and_validated() -> None:
    options = read_peft_options({
        "use_dora": True, "use_rslora": True, "lora_bias": False, "peft_version": "0.17.1",
        "rank_pattern": {"q_proj": 16}, "alpha_pattern": {"q_proj": 32},
        "modules_to_save": ["lm_head", "lm_head"], "layers_to_transform": 3,
    })
    assert (options.use_dora, options.use_rslora, options.peft_version) == (True, True, "0.17.1")
    assert options.rank_pattern == (("q_proj", 16),)
    assert options.alpha_pattern == (("q_proj", 32.0),)
    assert (options.modules_to_save, options.layers_to_transform) == (("lm_head",), (3,))
    assert "DoRA" in (options.composition_blocker() or "")
    assert read_peft_options({"use_rslora": True}).composition_blocker() is None
    assert read_peft_options({}, PEFT_TEMPLATE_CARD).peft_version == "0.13.2"
    for bad, message in [({"use_dora": "yes"}, "'use_dora' must be true or false"),
                         ({"rank_pattern": {"q": 0}}, "rank_pattern entry 'q' must be a positive"),
                         ({"rank_pattern": {"q": 2.5}}, "positive integer"),
                         ({"layers_to_transform": [1, -2]}, "'layers_to_transform' must be"),
                         ({"modules_to_save": {"a": 1}}, "'modules_to_save' must be a list")]:
        with pytest.raises(InvalidAdapter, match=message):
            read_peft_options(bad)


def test_template_placeholders_are_no_description() -> None:
    assert first_paragraph(PEFT_TEMPLATE_CARD) is None
    assert first_paragraph("<!-- a\ncomment -->\n\nTurns questions into SQL.\n") == (
        "Turns questions into SQL.")


@pytest.mark.parametrize(("raw", "is_path"), [
    ("/content/chatglm2-6b", True), ("C:\\Users\\me\\llama-7b", True),
    ("models/Qwen2_5-1_5b-Instruct", True), ("./output/base", True), ("~/llama", True),
    ("meta-llama/Llama-2-7b-hf", False), ("gpt2", False),
    ("https://huggingface.co/org/name", False),
    ("/root/.cache/huggingface/hub/models--org--name/snapshots/abc", False),
])
def test_local_path_base_models_are_told_apart_from_hub_ids(raw: str, is_path: bool) -> None:
    assert is_local_path(raw) is is_path
    assert base_model_key(raw).startswith("path:") is is_path


def test_a_dora_module_with_a_local_base_is_recorded_as_such(tmp_path: Path) -> None:
    folder = write_lora_adapter(
        tmp_path / "m", base_model="/content/chatglm2-6b", card=PEFT_TEMPLATE_CARD,
        config_overrides={"use_dora": True, "peft_version": "0.18.0"},
    )
    module = inspect_adapter_folder(folder)
    assert (module.base_model, module.base_model_is_path) == ("/content/chatglm2-6b", True)
    assert (module.use_dora, module.peft_version, module.description) == (True, "0.18.0", None)


def test_a_local_path_in_the_config_yields_to_a_hub_id_in_the_card(tmp_path: Path) -> None:
    folder = write_lora_adapter(tmp_path / "m", base_model="/content/SmolLM2-135M",
                                front_matter={"base_model": "HuggingFaceTB/SmolLM2-135M"})
    module = inspect_adapter_folder(folder)
    assert (module.base_model, module.base_model_is_path) == ("HuggingFaceTB/SmolLM2-135M", False)


def test_store_round_trips_options_and_filters_what_compose_can_use(
    store: RegistryStore, module_factory: Callable[..., Module]
) -> None:
    plain = module_factory("alice/plain")
    dora = dataclasses.replace(module_factory("alice/dora"), use_dora=True, peft_version="0.13.2")
    patterned = dataclasses.replace(module_factory("alice/pattern"),
                                    rank_pattern=(("q_proj", 4),), layers_to_transform=(0, 1))
    composed = dataclasses.replace(module_factory("alice/composed"),
                                   lineage=(LineageEdge("alice/plain", weight=0.5),))
    local = dataclasses.replace(module_factory("alice/local", base_model="/content/base"))
    for module in (plain, dora, patterned, composed, local):
        store.upsert_module(module)
    got = store.get_module("alice/pattern")
    assert got.rank_pattern == (("q_proj", 4),) and got.layers_to_transform == (0, 1)
    assert store.get_module("alice/dora").use_dora
    assert store.get_module("alice/local").base_model_is_path
    base = plain.base_model

    def ids(**filters: object) -> set[str]:
        return {m.repo_id for m in store.search(SearchQuery(base_model=base, **filters))}

    assert ids() == {"alice/plain", "alice/dora", "alice/pattern", "alice/composed"}
    assert ids(composable=True) == {"alice/plain", "alice/composed"}
    assert ids(composable=True, include_composed=False) == {"alice/plain"}
    assert "alice/dora" not in {c.module.repo_id for c in store.compatible_with("alice/plain")}
    assert {m.repo_id for m in store.search(SearchQuery(base_model="content/base"))} == set()
    assert {m.repo_id for m in store.search(SearchQuery(base_model="/content/base"))} == {
        "alice/local"}


def test_the_composable_filter_is_the_composers_rule(
    store: RegistryStore, module_factory: Callable[..., Module]
) -> None:
    """SQL's ``composable`` and ``PeftOptions.composition_blocker`` say the same of each option."""
    from registry.peft_options import module_peft_options

    options = {"use_dora": True, "use_rslora": True, "lora_bias": True,
               "rank_pattern": (("q_proj", 4),), "alpha_pattern": (("q_proj", 8.0),),
               "modules_to_save": ("lm_head",), "layers_to_transform": (0,)}
    modules = [dataclasses.replace(module_factory(f"alice/{name}"), **{name: value})
               for name, value in options.items()]
    store.bulk_upsert(modules)
    drawn = {m.repo_id for m in store.search(SearchQuery(composable=True, limit=50))}
    for module in modules:
        usable = module_peft_options(module).composition_blocker() is None
        assert (module.repo_id in drawn) is usable, module.repo_id
    assert drawn == {"alice/use_rslora"}
