"""The copy's work in steps (gateway/store/steps.py) gives what the single calls it
replaces give, at every size around a step's bounds."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.store import steps


@pytest.fixture(autouse=True)
def small_steps(monkeypatch):
    monkeypatch.setattr(steps, "STEP", 3)
    monkeypatch.setattr(steps, "PART_BYTES", 5)


@given(st.lists(st.integers(), max_size=20))
def test_mapped_and_keyed_are_map_and_dict(values):
    assert steps.mapped(str, values) == list(map(str, values))
    assert steps.mapped(max, values, values[::-1]) == list(map(max, values, values[::-1]))
    names = [f"k{i % 7}" for i in range(len(values))]  # repeated keys: the last one kept
    assert steps.keyed(names, values) == dict(zip(names, values, strict=True))


def test_keyed_refuses_keys_and_values_that_do_not_pair():
    with pytest.raises(ValueError, match="3 keys for 2 values"):
        steps.keyed(["a", "b", "c"], [1, 2])


@given(st.lists(st.binary(max_size=9).map(lambda b: b.replace(b"\n", b"")), max_size=20))
def test_lines_and_matches_found_in_parts_are_the_whole_texts(lines):
    text = b"\n" + b"".join(line + b"\n" for line in lines)
    assert steps.lines_of(text) == text.split(b"\n")[1:-1]
    pattern = re.compile(rb"a([^\n]*)")  # within a line, as the copy's are
    assert steps.found_in_parts(pattern, text) == pattern.findall(text)
    covered = list(steps.parts(text))
    assert [low for low, _ in covered[1:]] == [high for _, high in covered[:-1]]
    assert all(text[high - 1:high] == b"\n" for _, high in covered)


@given(st.lists(st.integers(min_value=-5, max_value=40), max_size=60),
       st.sampled_from([abs, lambda v: v % 3, lambda v: 0, lambda v: -v]))
def test_a_sort_in_steps_is_sorted_stable_at_every_size(values, key):
    """Bucket by bucket, keys repeated (a bucket of one key), every key equal, in
    reverse: the order sorted() gives, equal keys in the order given."""
    items = list(enumerate(values))

    def keyed_value(item):
        return key(item[1])

    assert steps.sorted_in_steps(items, keyed_value) == sorted(items, key=keyed_value)


def test_release_empties_lists_and_dicts_in_place():
    items, named = list(range(10)), {i: str(i) for i in range(10)}
    kept = items
    steps.release(items, named)
    assert kept == [] and items == [] and named == {}
