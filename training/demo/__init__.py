"""The self-built demo model: synthetic chat corpus, tokenizer, chat template and pre-training."""
