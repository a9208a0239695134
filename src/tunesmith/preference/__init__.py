"""Preference tuning: candidates (candidates.py) → judges (judges.py) → pairs (pairs.py) → DPO (dpo.py).

Preference pairs for DPO: candidate replies from the base and SFT models, ranked by a judge.

Candidates per prompt: the base model's greedy reply ("base"), the SFT model's ("sft" = base +
adapter) and optionally `samples` sampled SFT replies ("sft-sample-1", ...). A judge scores every
candidate; the best becomes `chosen`, the worst `rejected`. Prompts whose candidates are all the
same text, or whose best and worst differ by less than `min_gap`, give no pair.

Judges:
  heads     the SFT adapter's emotion/strategy heads plus rule checks; no extra model or network.
            score = tone + congruence + strategy − 100 × (number of issues), where
              tone        the emotion head reading the reply as a text (as it read GoEmotions
                          comments): P(caring) + ½·P(approval, optimism, admiration, gratitude,
                          love, relief) − P(anger, annoyance, disapproval, disgust)
              congruence  the emotion head on the user's message: P(user positive)·P(reply shares
                          joy) − P(user negative)·P(reply cheerful): no cheering at bad news
              strategy    Σ_s P_strategy-head(s | prompt) · [reply shows strategy s], s detected by
                          plain patterns (a "?" for Question, "it sounds like" for Reflection, ...)
              issues      quality (empty, too short, repetitive, template tokens) and safety: with
                          `tunesmith.chat.crisis` available, its rules (not its classifier) on the
                          prompt — a crisis message needs a reply that points to help — and on
                          the reply itself. Issues apply to the endpoint judge as well.
            A heuristic proxy: it is only as good as the heads (see the run's head metrics).
  endpoint  an EQ-style rubric (empathy, validation, insight, helpfulness, safety, conversational
            quality; 0–10 each plus overall) scored by an OpenAI-compatible chat endpoint
            (POST <url>/v1/chat/completions), candidates shown in a seeded random order.
  file      human labels: JSONL rows {"id": ..., "chosen": C, "rejected": C}, C a candidate's source
            name ("base", "sft", "sft-sample-1") or 0-based index in the candidates file.

Output (one object per line; TRL's *conversational* preference format, which DPOTrainer renders
with the model's chat template):
  {"id": "...", "prompt": [{"role": "user", "content": "..."}],
   "chosen": [{"role": "assistant", "content": "..."}],
   "rejected": [{"role": "assistant", "content": "..."}],
   "meta": {"judge": "heads", "chosen_source": "sft", "rejected_source": "base", "scores": {...}}}
`load_pairs` also accepts plain strings (a string prompt = one user turn, a string reply = one
assistant turn), so hand-written files can be short. The prompt holds no system turn: the DPO
config's `data.system_prompt` is added at training time, as in SFT.
"""
