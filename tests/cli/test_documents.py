"""JSON and YAML from outside are parsed with bounded nesting, no long integers, no aliases."""

from __future__ import annotations

import pytest

from loradex.documents import MAX_DEPTH, MalformedDocument, check_depth, parse_json, parse_yaml


def test_parse_json_accepts_ordinary_documents() -> None:
    assert parse_json('{"r": 16, "target_modules": ["q_proj", "v_proj"]}') == {
        "r": 16, "target_modules": ["q_proj", "v_proj"],
    }
    assert parse_json(b"3") == 3
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_json(nested) == parse_json(nested)  # exactly the limit is fine


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000, "nested more than 64 levels"),  # RecursionError inside json
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested more than 64 levels"),
        ('{"r": ' + "9" * 5000 + "}", "integer string conversion"),  # not a JSONDecodeError
        (b"\"\xff\"", "can't decode"),
        ("{nope", "Expecting property name"),
    ],
)
def test_parse_json_refuses_hostile_documents(text: str | bytes, message: str) -> None:
    with pytest.raises(MalformedDocument, match=message) as info:
        parse_json(text)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_parse_yaml_reads_cards_but_refuses_aliases_and_deep_nesting() -> None:
    assert parse_yaml("license: mit\ntags: [a, b]\n") == {"license": "mit", "tags": ["a", "b"]}
    with pytest.raises(MalformedDocument, match=r"aliases \(\*x\) are not accepted \(line 1"):
        parse_yaml("a: &x [*x]")  # a value that contains itself
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
    )
    with pytest.raises(MalformedDocument, match="aliases"):
        parse_yaml(bomb)  # 9**7 nodes from a few hundred bytes
    with pytest.raises(MalformedDocument, match="nested more than"):
        parse_yaml("a: " + "[" * 5000 + "]" * 5000)
    with pytest.raises(MalformedDocument, match=r"expected ',' or '\]'.*\(line 1, column 6\)"):
        parse_yaml("a: [b")


def test_check_depth_walks_without_recursion() -> None:
    deep: list = []
    for _ in range(10_000):  # deeper than the interpreter's recursion limit
        deep = [deep]
    with pytest.raises(MalformedDocument):
        check_depth(deep)
    check_depth({"a": [{"b": 1}]}, max_depth=3)
    with pytest.raises(MalformedDocument):
        check_depth({"a": [{"b": []}]}, max_depth=3)
    check_depth("scalar", max_depth=0)
