"""Byte-level BPE tokenizer for the demo model, trained on its corpus, with a ChatML chat template.

The template marks each assistant reply, its `<|im_end|>` and the newline after it with
`{% generation %}`, which is exactly the completion TRL trains on (see the loss-mask pitfall in DESIGN.md),
so `apply_chat_template(..., return_assistant_tokens_mask=True)` and TRL's assistant-only loss both work.

    from training.demo.tokenizer import train_tokenizer
    tokenizer = train_tokenizer(conversations(5_000, seed=0))   # a transformers PreTrainedTokenizerFast
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

VOCAB_SIZE = 1024  # specials and the 256 byte symbols included
MAX_LENGTH = 512  # = the model's max_position_embeddings
IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|pad|>"

# ChatML. Message content may be a string or a list of OpenAI-style content blocks (their text is joined).
# The generation block covers the reply, <|im_end|> and the trailing newline: everything the model emits.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set content = message['content'] -%}"
    "{%- else -%}"
    "{%- set content = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- content + '<|im_end|>\\n' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _training_text(conversations: list[list[dict]]) -> Iterator[str]:
    # Role names and contents as the template lays them out, without the special-token strings
    # (those are added whole and must not leak into merges).
    for messages in conversations:
        yield "".join(f"{m['role']}\n{m['content']}\n" for m in messages)


def train_tokenizer(conversations: list[list[dict]], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the conversations and wrap it with the chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Digits one by one, as Llama does: "19" and "190" share their digit tokens, which helps the sums.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact, which the assistant-token mask is computed from.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[IM_START, IM_END, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, so any unicode text encodes
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(conversations), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
