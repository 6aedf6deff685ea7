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
