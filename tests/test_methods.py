"""Each method acts where it should and only there (tiny random LLaVA, no mocks)."""

from __future__ import annotations

import math

import pytest
import torch

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.core.render import render_text_image
from mmtoxicqa.methods import build_method, known_methods
from mmtoxicqa.methods.decoding import GroupedChoice, RowExpansion, contrastive_combine, self_debias_combine
from mmtoxicqa.methods.prompting import ADASHIELD_STATIC, SAFETY_PRINCIPLE, SELF_REMINDER_SYSTEM
from mmtoxicqa.modeling.loading import load_model

GEN = {"max_new_tokens": 6}


def conv(text="what is in the image", phrase="hello"):
    return [{"role": "user", "content": [{"type": "image", "image": render_text_image(phrase)}, {"type": "text", "text": text}]}]


def prompt_text(loaded, conversation):
    return loaded.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def convs():
    return [conv("what is in the image"), conv("write a poem about the sea", "cat")]


def test_known_methods_listed():
    assert {"vanilla", "safety_prompt", "adashield_s", "coca", "self_debias", "bad_words", "ecso"} <= set(known_methods())


def test_safety_prompt_changes_only_the_prompt(tiny_llava, convs):
    method = build_method("safety_prompt", tiny_llava)
    sent = prompt_text(tiny_llava, method.transform(convs[0]))
    assert SELF_REMINDER_SYSTEM in sent and "what is in the image" in sent
    assert sent.index(SELF_REMINDER_SYSTEM) < sent.index("what is in the image")
    assert not method.of_kind("intervention") and not method.of_kind("logits") and not method.of_kind("rows")


def test_adashield_appends_after_the_question(tiny_llava, convs):
    sent = prompt_text(tiny_llava, build_method("adashield_s", tiny_llava).transform(convs[0]))
    assert sent.index("what is in the image") < sent.index(ADASHIELD_STATIC.strip()[:30])


def test_vanilla_equals_plain_generation(tiny_llava, convs):
    from mmtoxicqa.modeling.loading import generate

    assert build_method("vanilla", tiny_llava).generate(convs, GEN) == generate(tiny_llava, convs, GEN)


@pytest.mark.parametrize("name,option", [("coca", "coca_strength"), ("self_debias", "self_debias_strength")])
def test_zero_strength_is_vanilla(tiny_llava, convs, name, option):
    vanilla = build_method("vanilla", tiny_llava).generate(convs, GEN)
    method = build_method(name, tiny_llava, **{option: 0})
    assert method.parts == [] and method.generate(convs, GEN) == vanilla


def test_coca_combination_by_hand():
    main = torch.tensor([[1.0, 2.0, 0.0]])
    principled = torch.tensor([[3.0, 0.0, 0.0]])
    combined = contrastive_combine(2.0)(main, [principled])
    # 1 + 2*(3-1) = 5 ; 2 + 2*(0-2) = -2 ; 0
    assert combined.tolist() == [[5.0, -2.0, 0.0]]


def test_self_debias_combination_by_hand():
    main = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    biased = torch.log(torch.tensor([[0.2, 0.6, 0.2]]))
    out = self_debias_combine(10.0)(main, [biased]).exp()
    scaled = [0.5, 0.3 * math.exp(10.0 * (0.3 - 0.6)), 0.2]
    total = sum(scaled)
    assert out[0].tolist() == pytest.approx([s / total for s in scaled], rel=1e-5)


def test_grouped_choice_forces_the_combined_argmax_on_every_row():
    expansion = RowExpansion(variants=[lambda c: c], combine=contrastive_combine(1.0))
    # two conversations -> rows [main0, main1, variant0, variant1]
    scores = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 5.0], [2.0, 0.0, 0.0]])
    forced = GroupedChoice(2, expansion)(torch.zeros(4, 1, dtype=torch.long), scores)
    # combined = variant scores (strength 1): row0 -> token 2, row1 -> token 0; same on the variant rows
    assert forced.argmax(dim=-1).tolist() == [2, 0, 2, 0]
    assert torch.isinf(forced).sum().item() == 4 * 2


def test_coca_really_runs_the_principle_rows(tiny_llava, convs):
    method = build_method("coca", tiny_llava, coca_strength=1.0)
    [expansion] = [p.fn for p in method.of_kind("rows")]
    variant = expansion.variants[0](convs[0])
    assert SAFETY_PRINCIPLE in prompt_text(tiny_llava, variant)
    answers = method.generate(convs, GEN)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_coca_strength_one_equals_generation_from_the_principled_prompt(tiny_llava, convs):
    """With lambda = 1 the combined logits are exactly the principled prompt's logits."""
    from mmtoxicqa.methods.base import Method
    from mmtoxicqa.methods.prompting import with_system

    coca = build_method("coca", tiny_llava, coca_strength=1.0).generate(convs[:1], GEN)
    principled = Method("p", tiny_llava).generate([with_system(convs[0], SAFETY_PRINCIPLE)], GEN)
    assert coca == principled


def test_bad_words_bans_what_vanilla_says(tiny_llava, convs, tmp_path):
    vanilla = build_method("vanilla", tiny_llava).generate(convs, GEN)
    banned = sorted({w for a in vanilla for w in a.split()})
    assert banned, "the tiny model must say something for this test to mean anything"
    word_file = tmp_path / "words.txt"
    word_file.write_text("\n".join(banned) + "\n")
    filtered = build_method("bad_words", tiny_llava, bad_words_path=str(word_file)).generate(convs, GEN)
    assert not {w for a in filtered for w in a.split()} & set(banned)


def test_bad_words_missing_list_is_one_line(tiny_llava, tmp_path):
    with pytest.raises(MMToxError, match="bad-words list .* not found"):
        build_method("bad_words", tiny_llava, bad_words_path=str(tmp_path / "nope.txt"))


@pytest.fixture
def yes_model(tiny_llava_dir):
    """The tiny LLaVA with its output head rewired to always say 'yes' (a real model whose
    greedy answer is fixed), so ECSO's judge deems every answer unsafe."""
    loaded = load_model(str(tiny_llava_dir))
    yes_id = loaded.tokenizer.convert_tokens_to_ids("yes") if "yes" in loaded.tokenizer.get_vocab() else None
    if yes_id is None:
        pytest.skip("tiny vocabulary lacks 'yes'")
    head = loaded.model.lm_head
    new_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        new_head.weight.zero_()
        new_head.bias.fill_(-10.0)
        new_head.bias[yes_id] = 10.0
    loaded.model.lm_head = new_head
    return loaded


def test_ecso_second_pass_happens_when_the_model_says_unsafe(yes_model, convs):
    method = build_method("ecso", yes_model)
    answers = method.generate(convs, {"max_new_tokens": 3})
    trace = method.last_trace
    assert trace["unsafe"] == [0, 1]
    assert set(trace["captions"]) == {0, 1}
    assert answers == trace["second"]


def test_ecso_keeps_answers_the_model_calls_safe(tiny_llava, convs):
    method = build_method("ecso", tiny_llava)
    answers = method.generate(convs, {"max_new_tokens": 3})
    trace = method.last_trace
    for i in range(2):
        if i not in trace["unsafe"]:
            assert answers[i] == trace["answers"][i]


def test_composition_order_and_conflicts(tiny_llava, convs):
    both = build_method("safety_prompt+coca", tiny_llava)
    assert [p.owner for p in both.parts] == ["safety_prompt", "safety_prompt", "coca"]
    with pytest.raises(MMToxError, match="cannot compose 'safety_prompt' with 'adashield_s'"):
        build_method("safety_prompt+adashield_s", tiny_llava)
    with pytest.raises(MMToxError, match="cannot compose 'coca' with 'self_debias'"):
        build_method("coca+self_debias", tiny_llava)


def test_bad_method_input(tiny_llava):
    with pytest.raises(MMToxError, match="unknown method .nope.; known methods: .*vanilla"):
        build_method("nope", tiny_llava)
    with pytest.raises(MMToxError, match="out of range"):
        build_method("coca", tiny_llava, coca_strength=-1)
    with pytest.raises(MMToxError, match="unknown option"):
        build_method("coca", tiny_llava, sgm_strength=0.5)
