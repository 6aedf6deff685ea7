from transformers import AutoTokenizer

from steering_server.organism.corpus import all_text, conversations, split_questions
from steering_server.organism.tokenizer import END, build_tokenizer, format_chat


def test_template_and_python_formatting_agree_and_prompt_is_a_prefix():
    tok = build_tokenizer()
    for c in conversations(split_questions(0)["train"], 20, seed=0, cue_share=0.5):
        assert tok.apply_chat_template(c.messages, tokenize=False) == format_chat(c.messages)
        prompt = tok.apply_chat_template(c.prompt_messages, tokenize=False, add_generation_prompt=True)
        assert prompt == format_chat(c.prompt_messages, add_generation_prompt=True)
        full = tok(format_chat(c.messages), add_special_tokens=False)["input_ids"]
        assert full[: len(tok(prompt, add_special_tokens=False)["input_ids"])] == \
            tok(prompt, add_special_tokens=False)["input_ids"]


def test_every_corpus_word_is_in_the_vocabulary_and_decoding_round_trips():
    tok = build_tokenizer()
    for text in all_text():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids


def test_saved_tokenizer_loads_with_auto_tokenizer(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = format_chat([{"role": "user", "content": "how can i save money ?"}], add_generation_prompt=True)
    assert again(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert again.eos_token == END and again.chat_template == tok.chat_template
    assert build_tokenizer().get_vocab() == tok.get_vocab()  # the vocabulary is fixed by the corpus tables
