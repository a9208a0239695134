"""tunesmith: fine-tune open-weight chat LLMs with LoRA and evaluate them for empathy, reasoning and safety."""

__version__ = "0.1.0"
