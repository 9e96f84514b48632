"""Offline prompt generation, the LLM template, and prompts over the built-in categories."""

import re

import pytest

from lostcli.data.prompts import (
    PROMPT_GROUPS,
    PROMPT_TEMPLATE,
    generate_prompts,
    prompt_capacity,
    synth_prompt_items,
    synth_prompts,
)
from lostcli.data.synth import CATEGORIES, CATEGORY_SYNONYMS
from lostcli.errors import DataError


def test_prompts_are_unique_deterministic_and_seeded():
    a = generate_prompts(500, seed=0)
    assert len(a) == 500 and len(set(a)) == 500
    assert a == generate_prompts(500, seed=0)
    b = generate_prompts(500, seed=1)
    assert a != b and len(set(a) & set(b)) < 100
    assert generate_prompts(0, seed=0) == []
    assert all(p and p == p.strip() and "{" not in p for p in a)


def test_prompts_cover_the_five_groups_evenly():
    prompts = generate_prompts(250, seed=3)
    assert len(PROMPT_GROUPS) == 5
    for name, group in PROMPT_GROUPS.items():
        hits = sum(any(re.search(rf"\b{re.escape(noun)}\b", p) for noun in group.nouns) for p in prompts)
        assert hits >= 40, (name, hits)  # 50 each by construction (a noun may occur in another group too)


def test_too_many_prompts_is_a_clear_error():
    with pytest.raises(DataError, match="unique prompts"):
        generate_prompts(prompt_capacity(), seed=0)


def test_template_has_an_n_placeholder_and_formats():
    assert "{n}" in PROMPT_TEMPLATE
    text = PROMPT_TEMPLATE.format(n=500)
    assert "500 prompts" in text and "{" not in text
    for word in ("Characters", "Architecture", "Vehicles", "animals", "numbered"):
        assert word in text


def test_synth_prompts_name_the_builtin_categories():
    items = synth_prompt_items(2 * len(CATEGORIES), seed=0)
    assert [c for c, _ in items] == list(CATEGORIES) * 2
    for category, prompt in items:
        assert any(re.search(rf"\b{re.escape(w)}", prompt) for w in (category, *CATEGORY_SYNONYMS[category])), prompt
    prompts = synth_prompts(2 * len(CATEGORIES), seed=0)
    assert prompts == [p for _, p in items] and len(set(prompts)) == len(prompts)
    assert synth_prompts(5, seed=1) != synth_prompts(5, seed=2)


def test_prompt_lines_keep_line_numbers_and_count_what_was_skipped(tmp_path):
    from lostcli.data.prompts import read_prompt_lines

    path = tmp_path / "p.txt"
    path.write_text("1. a red chair\n\n# note\nlamp\t2) a brass lamp\n   \n", encoding="utf-8")
    plain = read_prompt_lines(path)
    assert [(i.line, i.category, i.prompt) for i in plain.items] == [(1, None, "1. a red chair"),
                                                                     (4, "lamp", "2) a brass lamp")]
    assert (plain.blank, plain.comments) == (2, 1)
    numbered = read_prompt_lines(path, numbered=True)
    assert [i.prompt for i in numbered.items] == ["a red chair", "a brass lamp"]
    with pytest.raises(DataError, match="prompt file not found"):
        read_prompt_lines(tmp_path / "nope.txt")
