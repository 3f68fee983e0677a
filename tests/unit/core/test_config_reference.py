"""The configuration reference: every setting has a one-sentence description, docs/configuration.md
is what the settings generate today, and the history the descriptions link to exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.config_reference import REFERENCE_COMMAND, describe, reference_markdown, setting_docs
from core.settings import Settings

DOCS = Path(__file__).resolve().parents[3] / "docs"


def test_docs_configuration_md_is_current():
    if (DOCS / "configuration.md").read_text() != reference_markdown():
        pytest.fail(f"docs/configuration.md is not what core/settings.py generates: run `{REFERENCE_COMMAND}`")


@pytest.mark.parametrize("doc", list(setting_docs()), ids=lambda d: d.path)
def test_every_setting_says_in_one_sentence_what_it_does(doc):
    text = doc.description
    assert text and (text[0].isupper() or text[0] in "`$<") and text.endswith("."), text
    assert not re.search(r"\.\s+[A-Z]", text), f"{doc.path}: one sentence, please: {text}"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than `-` and `_` dropped, spaces as `-`."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in headings}


def test_the_history_a_description_links_to_exists():
    anchors = _anchors((DOCS / "settings-history.md").read_text())
    linked = {a for doc in setting_docs() for a in re.findall(r"settings-history\.md#([\w-]+)", doc.description)}
    assert linked and linked <= anchors, linked - anchors


def test_config_show_describe_gives_value_default_and_description():
    text = describe(Settings(policy={"training": {"epochs": 3}}, kafka={"sasl_password": "hunter2"}))
    assert "policy.training.epochs = 3  (default 20)\n    PPO iterations" in text
    assert 'kafka.sasl_password = "**********"' in text and "hunter2" not in text
    assert "policy.training.batch_size = 16\n" in text  # at its default: no second figure
