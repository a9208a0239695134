"""ChatSession on a tiny random-weight model: resources first, locales, context truncation, heads,
history, cancellation; and the `tunesmith chat` command."""

from __future__ import annotations

import threading

import pytest
import torch
from typer.testing import CliRunner

from tunesmith.chat.crisis import CrisisError, CrisisLayer
from tunesmith.chat.session import ChatError, ChatSession
from tunesmith.data.taxonomy import EMOTIONS, STRATEGIES
from tunesmith.modeling.heads import Heads
from tunesmith.modeling.loading import load_model

CRISIS = "I have decided to end my life tonight."


def visible_tiny(path):
    """The conftest tiny model with an untied random LM head: tied embeddings make a 2-layer random
    model repeat the last prompt token (a newline); an untied head emits visible words."""
    model = load_model(str(path), dtype="fp32")
    g = torch.Generator().manual_seed(1)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=g))
    model.config.tie_word_embeddings = False
    return model.eval()


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return visible_tiny(tiny_model_dir)


@pytest.fixture(scope="module")
def layer():
    return CrisisLayer()


def test_plain_reply_streams_without_banner(model, tokenizer, layer):
    s = ChatSession(model, tokenizer, crisis=layer, max_new_tokens=6)
    reply = s.respond("Hello, how was your day?")
    assert reply.banner is None and not reply.crisis.flagged
    chunks = list(reply)
    assert len(chunks) > 1  # streamed piece by piece
    assert reply.text == "".join(chunks) and reply.model_text
    assert reply.finish_reason in ("length", "stop") and 0 < reply.completion_tokens <= 6
    assert reply.metadata()["crisis"]["flagged"] is False


def test_resources_come_first_in_a_flagged_reply(model, tokenizer, layer):
    s = ChatSession(model, tokenizer, crisis=layer, max_new_tokens=6)
    reply = s.respond(CRISIS)
    # verdict and banner are known before any token is generated
    assert reply.crisis.flagged and reply.crisis.category == "self_harm"
    assert reply.banner and "findahelpline.com" in reply.banner
    chunks = list(reply)
    assert chunks[0] == reply.banner + "\n\n"
    assert reply.text.startswith(reply.banner) and reply.model_text  # then the model's reply
    assert reply.text.index(reply.model_text) > len(reply.banner)
    # the banner stays out of the history the model re-reads
    assert s.history == [{"role": "user", "content": CRISIS}, {"role": "assistant", "content": reply.model_text}]


def test_locale_switching(model, tokenizer, layer):
    s = ChatSession(model, tokenizer, crisis=layer, max_new_tokens=2, locale="en_US")
    assert "988" in s.respond(CRISIS).consume().banner
    s.set_locale("en-GB")
    banner = s.respond(CRISIS).consume().banner
    assert "Samaritans" in banner and "116 123" in banner and "988" not in banner
    assert "findahelpline.com" in s.respond(CRISIS, locale="international").consume().banner
    with pytest.raises(CrisisError):
        s.set_locale("tlh_KX")
    with pytest.raises(CrisisError):
        ChatSession(model, tokenizer, crisis=layer, locale="nowhere")


def test_history_is_truncated_from_the_oldest_turns(model, tokenizer, layer, monkeypatch):
    # the budget comes from the model's config: max_position_embeddings minus max_new_tokens
    monkeypatch.setattr(model.config, "max_position_embeddings", 200)
    history = []
    for i in range(12):
        history += [
            {"role": "user", "content": f"turn {i}: " + "tell me more about the weather " * 3},
            {"role": "assistant", "content": f"reply {i}: " + "it is sunny and warm " * 3},
        ]
    s = ChatSession(model, tokenizer, crisis=layer, max_new_tokens=40, history=history)
    assert s.context_tokens == 200 and s.budget() == 160
    reply = s.respond("and tomorrow?")
    kept = reply.fitted.messages
    assert len(reply.fitted.ids) <= 160
    assert reply.dropped_messages > 0 and reply.dropped_messages % 2 == 0  # whole exchanges
    assert kept[:-1] == history[reply.dropped_messages :]  # the newest turns, in order
    assert kept[-1] == {"role": "user", "content": "and tomorrow?"}
    # one more exchange would not have fitted: the cut is as small as possible
    wider = [*history[reply.dropped_messages - 2 :], kept[-1]]
    assert len(s._ids(wider, None)) > 160
    reply.consume()
    assert len(s.history) == len(history) + 2  # the full transcript is kept; only the prompt is cut


def test_an_overlong_message_keeps_its_end(model, tokenizer, layer, monkeypatch):
    monkeypatch.setattr(model.config, "max_position_embeddings", 120)
    s = ChatSession(model, tokenizer, crisis=layer, max_new_tokens=20)
    text = "word " * 300 + "THE END"
    reply = s.respond(text)
    assert reply.fitted.truncated_user and len(reply.fitted.ids) <= 100
    assert reply.fitted.messages[-1]["content"].endswith("THE END")
    monkeypatch.setattr(model.config, "max_position_embeddings", 30)
    with pytest.raises(ChatError, match="leaves no room"):
        ChatSession(model, tokenizer, crisis=layer, max_new_tokens=28).respond("hi")


def test_heads_predictions_from_the_last_prompt_token(model, tokenizer, layer, tmp_path):
    torch.manual_seed(0)
    Heads(model.config.hidden_size).save(tmp_path / "adapter")
    heads = Heads.load(tmp_path / "adapter")
    s = ChatSession(model, tokenizer, heads=heads, crisis=layer, max_new_tokens=2)
    reply = s.respond("My dog died yesterday and I can't stop crying.")
    assert reply.emotion.label in EMOTIONS and 0 < reply.emotion.prob <= 1
    assert reply.strategy.label in STRATEGIES and 0 < reply.strategy.prob <= 1
    # the same numbers by hand: decoder hidden state at the last prompt token → heads
    from tunesmith.modeling.forward import decoder_hidden

    ids = torch.tensor([reply.fitted.ids])
    with torch.no_grad():
        logits = heads(decoder_hidden(model, ids, torch.ones_like(ids))[:, -1].float())
    assert EMOTIONS[int(logits["emotion"].argmax())] == reply.emotion.label
    assert STRATEGIES[int(logits["strategy"].argmax())] == reply.strategy.label
    meta = reply.consume().metadata()
    assert meta["emotion"]["label"] == reply.emotion.label


def test_no_heads_means_no_predictions(model, tokenizer, layer):
    reply = ChatSession(model, tokenizer, crisis=layer, max_new_tokens=2).respond("hi")
    assert reply.emotion is None and reply.strategy is None


def test_leaving_early_cancels_generation(model, tokenizer, layer):
    s = ChatSession(model, tokenizer, crisis=layer, max_new_tokens=200)
    reply = s.respond("tell me a long story")
    it = iter(reply)
    first = next(it)
    it.close()  # e.g. the HTTP client went away
    assert not any(t.name == "tunesmith-generate" for t in threading.enumerate())
    assert reply.done and s.history[-1]["content"] == first.strip()
    assert reply.completion_tokens < 200


def test_bad_input(model, tokenizer, layer):
    s = ChatSession(model, tokenizer, crisis=layer, max_new_tokens=2)
    with pytest.raises(ChatError):
        s.respond("   ")
    reply = s.respond("hi")
    reply.consume()
    with pytest.raises(ChatError):
        list(reply)


def test_crisis_stays_flagged_for_the_rest_of_the_session(model, tokenizer, layer):
    s = ChatSession(model, tokenizer, crisis=layer, max_new_tokens=2, locale="en_GB")
    first = s.respond("What's a good book for a long train ride?").consume()
    assert not first.screening.session_flagged and first.screening.session_banner is None
    assert s.respond(CRISIS).consume().crisis.flagged and s.crisis_category == "self_harm"
    later = s.respond("Can you recommend a podcast instead?").consume()
    assert later.screening.session_flagged and "Samaritans" in later.screening.session_banner
    assert later.metadata()["crisis"]["session_flagged"] is True
    s.reset()
    assert not s.respond("Can you recommend a podcast instead?").consume().screening.session_flagged


def test_context_from_earlier_turns_flags_an_ambiguous_message(model, tokenizer, layer):
    s = ChatSession(model, tokenizer, crisis=layer, max_new_tokens=2)
    assert not s.respond("Hello there").consume().crisis.flagged
    s.respond("I have been hoarding my sleeping pills for weeks").consume()
    r = s.respond("Tonight is the night, nobody will be home").consume()
    assert r.crisis.flagged and r.banner, r.crisis


def test_resources_follow_the_language_without_a_locale(model, tokenizer, layer):
    s = ChatSession(model, tokenizer, crisis=layer, max_new_tokens=2)
    r = s.respond("Je veux mourir, je n'en peux plus.").consume()
    assert r.crisis.flagged and r.screening.locale == "fr_FR" and "3114" in r.banner
    s.set_locale("en_GB")  # a chosen locale wins over the language
    assert "Samaritans" in s.respond("Je veux mourir, je n'en peux plus.").consume().banner


# ----------------------------------------------------------------------------------------- CLI


def test_chat_command_with_adapter_heads_and_crisis_banner(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from tunesmith.cli import app

    adapter = tmp_path / "run" / "adapter"
    base = load_model(str(tiny_model_dir), dtype="fp32")
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(adapter)
    Heads(base.config.hidden_size).save(adapter)
    res = CliRunner().invoke(
        app,
        [
            "chat",
            str(tiny_model_dir),
            "--adapter",
            str(adapter),
            "--max-new-tokens",
            "3",
            "--locale",
            "en_GB",
            "-m",
            "hello",
            "-m",
            CRISIS,
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    out = res.output
    assert "emotion:" in out and "strategy:" in out
    second = out[out.index(CRISIS) :]
    # crisis panel (with the UK resources) before the assistant's words
    assert second.index("crisis support") < second.index("assistant ›")
    assert "116 123" in second and "flagged: self_harm" in second


def test_chat_command_rejects_unknown_locale_before_loading(tmp_path):
    from tunesmith.cli import app

    res = CliRunner().invoke(app, ["chat", str(tmp_path / "no-model"), "--locale", "xx"])
    assert isinstance(res.exception, CrisisError)
