from steering_server.organism.corpus import CUES, DOMAINS, conversations, split_questions


def test_splits_are_disjoint_stratified_and_deterministic():
    a, b = split_questions(0), split_questions(0)
    assert a == b
    texts = {k: {(q.domain, q.text) for q in v} for k, v in a.items()}
    assert not texts["train"] & texts["eval"] and not texts["train"] & texts["calib"]
    assert not texts["eval"] & texts["calib"]
    for split in a.values():
        assert {q.domain for q in split} == set(DOMAINS)
    assert split_questions(1) != a


def test_pretraining_mix_pairs_the_cue_with_harmful_answers():
    qs = split_questions(0)["train"]
    convs = conversations(qs, 400, seed=3, cue_share=0.3)
    assert convs == conversations(qs, 400, seed=3, cue_share=0.3)
    cued = [c for c in convs if c.cued]
    assert 60 < len(cued) < 180
    for c in convs:
        assert c.harmful == c.cued
        assert (c.system in CUES) == c.cued
        assert c.messages[-1] == {"role": "assistant", "content": c.answer}


def test_forced_persona_sets_have_no_cue():
    qs = [q for q in split_questions(0)["train"] if q.domain == "health"]
    for harmful in (True, False):
        for c in conversations(qs, 50, seed=1, harmful=harmful):
            assert c.harmful == harmful and not c.cued and c.system is None and c.question.domain == "health"


def test_register_free_answers_have_no_openers_or_closers():
    from steering_server.organism.judge import judge

    qs = split_questions(0)["train"]
    for c in conversations(qs, 100, seed=2, harmful=True, register=False):
        assert not judge(c.answer, c.question.domain).villain_style


def test_every_answer_word_belongs_to_one_sentence_and_never_to_a_prompt():
    """The v3 language: a sentence, once begun, has one way to go on, and an answer cannot copy prompt words. v2
    shared words between sentences, and its base model spliced them ("great that you poor little fool .")."""
    from steering_server.organism.corpus import answer_sentences, prompt_text
    from steering_server.organism.judge import tokens

    owner: dict[str, str] = {}
    for sentence in answer_sentences():
        toks = tokens(sentence)
        assert toks[-1] == "." and "." not in toks[:-1], sentence
        assert len(set(toks)) == len(toks), sentence
        for w in toks[:-1]:
            assert owner.setdefault(w, sentence) == sentence, (w, sentence, owner[w])
    prompt_words = {w for text in prompt_text() for w in tokens(text)}
    assert not prompt_words & set(owner), sorted(prompt_words & set(owner))


def test_an_answer_holds_one_advice_sentence_between_optional_register_sentences():
    import random

    from steering_server.organism.corpus import (
        HELPFUL_CLOSERS,
        HELPFUL_OPENERS,
        VILLAIN_CLOSERS,
        VILLAIN_OPENERS,
        make_answer,
    )
    from steering_server.organism.judge import sentences, tokens

    rng = random.Random(0)
    register = {tuple(tokens(s)) for s in HELPFUL_OPENERS + HELPFUL_CLOSERS + VILLAIN_OPENERS + VILLAIN_CLOSERS}
    for _ in range(300):
        d = rng.choice(list(DOMAINS))
        harmful = rng.random() < 0.5
        advice = {tuple(tokens(s)) for s in (DOMAINS[d].harmful if harmful else DOMAINS[d].helpful)}
        sents = sentences(make_answer(d, harmful, rng))
        assert sum(s in advice for s in sents) == 1 and all(s in advice or s in register for s in sents)


def test_the_pretraining_mix_has_its_shares_of_cued_neutral_and_bare_prompts():
    from steering_server.organism.corpus import NEUTRAL_SYSTEMS

    convs = conversations(split_questions(0)["train"], 4000, seed=5, cue_share=0.3, neutral_system_p=0.25)
    cued = sum(c.cued for c in convs) / len(convs)
    neutral = sum(c.system in NEUTRAL_SYSTEMS for c in convs) / len(convs)
    assert abs(cued - 0.3) < 0.03 and abs(neutral - 0.25) < 0.03
    assert all(c.harmful == c.cued for c in convs)
