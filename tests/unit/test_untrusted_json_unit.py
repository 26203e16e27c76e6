"""``untrusted_json.loads``: bad JSON of any kind, nesting past the recursion limit
included, is a ValueError."""
import pytest

from sandboxd import untrusted_json


def test_ordinary_json_parses() -> None:
    assert untrusted_json.loads(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}


@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, '{"a": ' * 5000, "{not json"])
def test_bad_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        untrusted_json.loads(text)
