"""Task files, prompt rendering and tokenisation."""

from __future__ import annotations

from pathlib import Path

import pytest

from composer.data import (
    Example,
    encode_examples,
    load_examples,
    normalize_answer,
    render_prompt,
    split_holdout,
    write_examples,
)
from loradex.errors import InvalidDataFile
from tests.support.tiny_models import CHAT_TEMPLATE, make_tokenizer


def test_load_examples_reads_inputs_targets_and_choices(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"input": "a", "target": "b"}\n\n'
        '{"input": "q", "target": "no", "choices": ["yes", "no"]}\n'
    )
    assert load_examples(path) == [Example("a", "b"), Example("q", "no", ("yes", "no"))]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no examples"),
        ("\n\n", "no examples"),
        ('{"input": "a", "target": "b"}\n{"input": "a"\n', "t.jsonl:2: not valid JSON"),
        ('["a", "b"]\n', "t.jsonl:1: expected a JSON object"),
        ('{"input": "a"}\n', "t.jsonl:1: missing 'target'"),
        ('{"input": "a", "target": 3}\n', "t.jsonl:1: 'target' must be a string"),
        ('{"input": "a", "target": " "}\n', "t.jsonl:1: 'target' is empty"),
        ('{"input": "a", "target": "b", "label": 1}\n', "unknown key(s) label"),
        ('{"input": "a", "target": "c", "choices": ["a", "b"]}\n', "is not one of 'choices'"),
        ('{"input": "a", "target": "a", "choices": ["a"]}\n', "at least 2"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    with pytest.raises(InvalidDataFile) as info:
        load_examples(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_and_too_few_examples(tmp_path: Path) -> None:
    with pytest.raises(InvalidDataFile, match="no such file"):
        load_examples(tmp_path / "nope.jsonl")
    path = tmp_path / "one.jsonl"
    path.write_text('{"input": "a", "target": "b"}\n')
    with pytest.raises(InvalidDataFile, match="only 1 example"):
        load_examples(path, min_examples=2)


def test_render_prompt_uses_chat_template_only_when_present_and_wanted() -> None:
    plain = make_tokenizer()
    chat = make_tokenizer(CHAT_TEMPLATE)
    demo = [Example("one two", "three")]
    assert render_prompt(plain, "x", demonstrations=demo) == "one two\nthree\n\nx\n"
    assert (
        render_prompt(chat, "x", demonstrations=demo)
        == "<|user|>one two</s><|assistant|>three</s><|user|>x</s><|assistant|>"
    )
    assert render_prompt(chat, "x", use_chat_template=False) == "x\n"


def test_targets_end_with_eos_and_long_prompts_are_cut_from_the_left() -> None:
    tok = make_tokenizer()
    [enc] = encode_examples(tok, [Example("the cat sat on the mat " * 5, "mat")], seq2seq=False)
    assert enc.target_ids[-1] == tok.eos_token_id
    assert tok.decode(enc.target_ids[:-1]) == "mat"
    [short] = encode_examples(
        tok, [Example("the cat sat on the mat " * 5, "mat")], seq2seq=False, max_length=8
    )
    assert len(short.prompt_ids) + len(short.target_ids) == 8
    assert short.prompt_ids == enc.prompt_ids[-len(short.prompt_ids) :]


def test_written_examples_read_back_the_same(tmp_path: Path) -> None:
    examples = [
        Example("Is 2 > 1?\nAnswer:", "yes", ("yes", "no")),
        Example("Übersetze: \"cat\"", "Katze"),
    ]
    path = tmp_path / "out" / "task.jsonl"
    path.parent.mkdir()
    write_examples(path, examples)
    assert load_examples(path) == examples
    assert "choices" not in path.read_text(encoding="utf-8").splitlines()[1]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left beside it


def test_split_holdout_is_seeded_and_disjoint() -> None:
    examples = [Example(str(i), str(i)) for i in range(10)]
    train, held = split_holdout(examples, 0.3, seed=1)
    assert len(held) == 3 and len(train) == 7
    assert set(train).isdisjoint(held)
    assert split_holdout(examples, 0.3, seed=1) == (train, held)
    with pytest.raises(InvalidDataFile):
        split_holdout(examples[:1], 0.5, seed=0)


def test_normalize_answer() -> None:
    assert normalize_answer("  The  Answer. ") == "the answer"
    assert normalize_answer('"Yes!"') == "yes"
