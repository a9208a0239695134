"""Talking to a tuned model: crisis layer, terminal chat, local web page, red-team sheet."""
