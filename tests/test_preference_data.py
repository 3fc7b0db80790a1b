"""Preference-dataset loading (ipo.training.preference_data) on small hand-written fixtures of every layout."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest
from helpers import write_jsonl

from ipo import IpoError
from ipo.training.preference_data import (
    balanced_unpaired_batches,
    check_data_for_loss,
    hh_to_messages,
    load_preference_data,
    split_common_prefix,
    split_hh_prompt,
    to_unpaired,
)

HH_CHOSEN = (
    "\n\nHuman: what are some pranks with a pen i can do?\n\nAssistant: Are you looking for practical joke ideas?"
    "\n\nHuman: yep\n\nAssistant: Ok, here is one.\n\nHuman: another one?"
    "\n\nAssistant: Hide the cap."
)
HH_REJECTED = HH_CHOSEN.rsplit("\n\nAssistant:", 1)[0] + "\n\nAssistant: Draw on their face."
HH_PROMPT = HH_CHOSEN.rsplit("\n\nAssistant:", 1)[0] + "\n\nAssistant:"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# ---------------------------------------------------------------------------------------------------
# Each layout
# ---------------------------------------------------------------------------------------------------
def test_standard_explicit_prompt(tmp_path):
    rows = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "id": 7}]
    data = load_preference_data(str(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert data.format == "standard" and data.paired and not data.conversational
    assert data.records == [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}]


def test_conversational_explicit_prompt(tmp_path):
    rows = [{"prompt": [user("Colour of the sky?")], "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")]}]
    data = load_preference_data(str(write_jsonl(tmp_path / "c.jsonl", rows)))
    assert data.format == "conversational" and data.conversational
    assert data.records[0] == rows[0]


def test_implicit_prompt_text_matches_trl_extract_prompt(tmp_path):
    from trl.data_utils import extract_prompt

    rows = [
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"},
    ]
    data = load_preference_data(str(write_jsonl(tmp_path / "i.jsonl", rows)))
    assert data.format == "implicit"
    assert data.records[0] == {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    for row, record in zip(rows, data.records):
        assert record == extract_prompt(row)


def test_implicit_conversational_ignores_a_text_prompt_column(tmp_path):
    # ultrafeedback_binarized: a text prompt plus whole conversations in chosen/rejected
    conversation = [user("Colour of the sky?")]
    rows = [
        {
            "prompt": "Colour of the sky?",
            "chosen": conversation + [assistant("Blue.")],
            "rejected": conversation + [assistant("Green.")],
        }
    ]
    data = load_preference_data(str(write_jsonl(tmp_path / "u.jsonl", rows)))
    assert data.format == "conversational_implicit"
    assert data.records[0] == {
        "prompt": conversation,
        "chosen": [assistant("Blue.")],
        "rejected": [assistant("Green.")],
    }


def test_common_prefix_edge_cases():
    assert split_common_prefix("abc", "abc") == ("abc", "", "")
    assert split_common_prefix("ab", "abc") == ("ab", "", "c")
    assert split_common_prefix("x y", "z y") == ("", "x y", "z y")
    messages = [user("a"), assistant("b")]
    assert split_common_prefix(messages, [user("a"), assistant("c")]) == (
        [user("a")],
        [assistant("b")],
        [assistant("c")],
    )


def test_implicit_rows_without_a_common_prompt_or_response_are_dropped(tmp_path):
    rows = [
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": "Blue.", "rejected": "Green."},  # no common prefix
        {"chosen": "Same text", "rejected": "Same text"},  # nothing left to compare
        {"chosen": "The sky is", "rejected": "The sky is green."},  # an empty chosen response is kept
    ]
    data = load_preference_data(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert len(data.records) == 2 and data.records[1] == {"prompt": "The sky is", "chosen": "", "rejected": " green."}
    assert data.dropped == Counter(
        {"no common prompt between chosen and rejected": 1, "chosen and rejected are identical": 1}
    )
    assert "dropped 2 rows" in data.summary()


def test_hh_prompt_split_on_a_multi_turn_dialogue():
    prompt, response = split_hh_prompt(HH_CHOSEN)
    assert prompt == (
        "\n\nHuman: what are some pranks with a pen i can do?\n\nAssistant: Are you looking for practical joke ideas?"
        "\n\nHuman: yep\n\nAssistant: Ok, here is one.\n\nHuman: another one?\n\nAssistant:"
    )
    assert response == " Hide the cap."  # the leading space stays with the response, as the DPO/RPO code
    assert split_hh_prompt("\n\nHuman: hello") is None


def test_hh_dataset_gzip_and_dropped_rows(tmp_path):
    rows = [
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
        # the rejected dialogue diverges in an earlier turn: dropped and counted
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED.replace("yep", "nope")},
        {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi there"},
    ]
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    data = load_preference_data(str(path))
    assert data.format == "hh"
    assert data.records == [{"prompt": HH_PROMPT, "chosen": " Hide the cap.", "rejected": " Draw on their face."}]
    assert data.dropped == Counter(
        {
            "chosen and rejected dialogues differ before the last Assistant turn": 1,
            "no Assistant turn in chosen or rejected": 1,
        }
    )


def test_hh_as_chat_messages(tmp_path):
    data = load_preference_data(
        str(write_jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])), hh_messages=True
    )
    assert data.records[0] == {
        "prompt": [
            user("what are some pranks with a pen i can do?"),
            assistant("Are you looking for practical joke ideas?"),
            user("yep"),
            assistant("Ok, here is one."),
            user("another one?"),
        ],
        "chosen": [assistant("Hide the cap.")],
        "rejected": [assistant("Draw on their face.")],
    }
    assert hh_to_messages("\n\nHuman: a\n\nAssistant:") == [user("a")]


def test_implicit_text_can_be_forced_on_hh_dialogues(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    data = load_preference_data(str(path), format="implicit")
    assert data.records[0]["prompt"] == HH_PROMPT  # the common prefix ends at the same place here


def test_llamafactory_sharegpt(tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello!"},
                {"from": "human", "value": "2+2?"},
            ],
            "chosen": {"from": "gpt", "value": "4"},
            "rejected": {"from": "gpt", "value": "5"},
        },
        {
            "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Sky?"}],
            "chosen": {"from": "gpt", "value": "Blue."},
            "rejected": {"from": "gpt", "value": "Green."},
        },
        {
            "system": "Top-level system.",
            "conversations": [{"from": "human", "value": "Sky?"}],
            "chosen": {"from": "gpt", "value": "Blue."},
            "rejected": {"from": "gpt", "value": "Green."},
        },
    ]
    path = tmp_path / "dpo_en_demo.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    data = load_preference_data(str(path))
    assert data.format == "sharegpt" and data.conversational
    assert data.records[0] == {
        "prompt": [user("Hi"), assistant("Hello!"), user("2+2?")],
        "chosen": [assistant("4")],
        "rejected": [assistant("5")],
    }
    assert data.records[1]["prompt"] == [{"role": "system", "content": "Be brief."}, user("Sky?")]
    assert data.records[2]["prompt"] == [{"role": "system", "content": "Top-level system."}, user("Sky?")]


def test_unpaired_rows_and_conversion(tmp_path):
    rows = [
        {"prompt": "Sky?", "completion": "Blue.", "label": True},
        {"prompt": "Sky?", "completion": "Green.", "label": 0},
    ]
    data = load_preference_data(str(write_jsonl(tmp_path / "u.jsonl", rows)))
    assert data.format == "unpaired" and not data.paired
    assert [r["label"] for r in data.records] == [True, False]

    paired = load_preference_data(
        str(
            write_jsonl(
                tmp_path / "p.jsonl",
                [{"prompt": "A", "chosen": "a1", "rejected": "a2"}, {"prompt": "B", "chosen": "b1", "rejected": "b2"}],
            )
        )
    )
    unpaired = to_unpaired(paired)
    assert unpaired.records == [
        {"prompt": "A", "completion": "a1", "label": True},
        {"prompt": "A", "completion": "a2", "label": False},
        {"prompt": "B", "completion": "b1", "label": True},
        {"prompt": "B", "completion": "b2", "label": False},
    ]
    assert not unpaired.paired and paired.paired  # the original is left alone
    assert "each pair split" in unpaired.summary()
    with pytest.raises(IpoError, match="already unpaired"):
        to_unpaired(unpaired)


# ---------------------------------------------------------------------------------------------------
# Which loss can train on what
# ---------------------------------------------------------------------------------------------------
def test_check_data_for_loss(tmp_path):
    paired = load_preference_data(
        str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "A", "chosen": "a", "rejected": "b"}]))
    )
    check_data_for_loss(paired, "sigmoid")
    check_data_for_loss(paired, "rpo_paired")
    with pytest.raises(IpoError, match="pass --unpaired"):
        check_data_for_loss(paired, "rpo_unpaired")
    unpaired = to_unpaired(paired)
    check_data_for_loss(unpaired, "rpo_unpaired")
    with pytest.raises(IpoError, match="drop --unpaired"):
        check_data_for_loss(unpaired, "ipo")
    check_data_for_loss(paired, "hinge")  # TRL's other losses train on pairs too
    with pytest.raises(IpoError, match="needs chosen/rejected pairs"):
        check_data_for_loss(unpaired, "hinge")


def test_balanced_unpaired_batches():
    labels = [True] * 10 + [False] * 7
    batches = balanced_unpaired_batches(labels, batch_size=4, seed=3)
    assert len(batches) == 3  # 7 undesirable examples fill 3 batches of 2; the rest is dropped, as RPO
    for batch in batches:
        assert [labels[i] for i in batch] == [True, False, True, False]
    used = [i for batch in batches for i in batch]
    assert len(set(used)) == len(used) == 12
    assert balanced_unpaired_batches(labels, 4, seed=3) == batches  # seeded
    assert balanced_unpaired_batches(labels, 4, seed=4) != batches
    with pytest.raises(ValueError, match="even"):
        balanced_unpaired_batches(labels, 3, seed=0)


# ---------------------------------------------------------------------------------------------------
# Bad rows: one line naming the file and the row
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"prompt": "A", "chosen": "a", "rejected": "b"}, {"prompt": "B", "chosen": "a"}],
            r"p\.jsonl: row 1 has no column 'rejected'",
        ),
        (
            [{"prompt": "A", "chosen": "a", "rejected": "b"}, {"prompt": "B", "chosen": 3, "rejected": "b"}],
            r"p\.jsonl: row 1: column 'chosen' must be text or a non-empty list of \{role, content\} messages, got int",
        ),
        (
            [
                {"prompt": "A", "chosen": "a", "rejected": "b"},
                {"prompt": "B", "chosen": [assistant("a")], "rejected": "b"},
            ],
            r"row 1: column 'chosen' must be text in a standard dataset",
        ),
        ([{"prompt": "A", "completion": "a", "label": "yes"}], r"row 0: 'label' must be true or false"),
        (
            [
                {
                    "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
                    "chosen": {"from": "gpt", "value": "a"},
                    "rejected": {"from": "gpt", "value": "b"},
                }
            ],
            r"row 0: 'conversations' must end with a human turn",
        ),
        (
            [
                {
                    "conversations": [{"from": "observation", "value": "{}"}],
                    "chosen": {"from": "gpt", "value": "a"},
                    "rejected": {"from": "gpt", "value": "b"},
                }
            ],
            r"row 0: 'conversations' has a turn from 'observation'",
        ),
        ([{"question": "A", "answer": "a"}], r"cannot tell the dataset format from columns answer, question"),
        ([{"prompt": "A", "chosen": "a", "rejected": "a"}], r"no usable rows \(all 1 dropped: chosen and rejected are"),
    ],
)
def test_bad_rows_give_one_line_errors(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(IpoError, match=message) as error:
        load_preference_data(str(path))
    assert "\n" not in str(error.value)


def test_bad_sources(tmp_path):
    with pytest.raises(IpoError, match="no such file"):
        load_preference_data(str(tmp_path / "missing.jsonl"))
    with pytest.raises(IpoError, match="unknown dataset format 'csv'"):
        load_preference_data(str(tmp_path / "missing.jsonl"), format="csv")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(IpoError, match="empty"):
        load_preference_data(str(tmp_path / "empty.jsonl"))
