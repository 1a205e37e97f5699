"""A small byte-level BPE tokenizer trained locally, so tiny test models need nothing from a hub.

The training text is built in (not read from disk) so the tokenizer, and with it every tiny model, is the same
byte for byte on every machine and every run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actcache.cache_builder.model_registry import ModelSpecError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["BOS_TOKEN", "EOS_TOKEN", "PAD_TOKEN", "SPECIAL_TOKENS", "TRAINING_TEXT", "train_tokenizer"]

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)  # ids 0, 1, 2

TRAINING_TEXT = """\
The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.
The capital of Germany is Berlin, and the capital of Japan is Tokyo. Paris is known for its museums.
Once upon a time there was a small village by the sea. Every morning the fishermen went out on their boats,
and every evening they came back with baskets full of fish. The children ran down to the harbour to meet them.
She was happy when the sun came out after a week of rain. He felt sad when his friend moved to another city.
They were angry because the train was late again, and afraid that they would miss the start of the concert.
The teacher explained the lesson slowly, so that everyone in the classroom could follow the reasoning.
A good story has a beginning, a middle and an end. The hero leaves home, faces a trial, and returns changed.
In the forest there lived an old owl who knew the names of all the stars. At night he told them to the foxes.
The market was busy: people were buying bread, cheese, apples, oranges, tomatoes and fresh green vegetables.
Water boils at one hundred degrees Celsius at sea level. Ice melts when the temperature rises above zero.
The model reads a sequence of tokens and predicts the next one. Each layer adds something to the residual stream.
Attention lets every position look back at earlier positions; the feed-forward block then transforms each one.
We measured the results twice and wrote them down carefully, because a careful record saves time later.
The river flows from the mountains to the sea, passing through fields, towns and quiet green valleys.
My grandmother baked a cake for my birthday. It was chocolate, with strawberries and cream on the top.
The engineers built a bridge across the river. It took three years, and when it opened the whole town came.
Please remember to close the window before you leave the house, because it might rain this afternoon.
The scientist looked through the microscope and saw thousands of tiny cells moving in the drop of water.
On Monday we work, on Tuesday we study, on Wednesday we rest, and on Thursday we start all over again.
"What is your name?" asked the girl. "My name is Tom," said the boy, "and I live in the house by the lake."
Numbers such as 1, 2, 3, 10, 42, 100 and 2024 appear in text too, along with symbols like +, -, =, % and $.
The king and the queen lived in a castle on a hill. Their daughter, the princess, loved to ride horses.
Honesty, kindness and courage are values that many stories try to teach to the people who read them.
The doctor told him to drink more water, sleep eight hours each night and walk for half an hour every day.
When the music started, everybody stood up and began to dance. The party lasted until the early morning.
"""


def train_tokenizer(
    vocab_size: int, model_max_length: int = 2048, text: str = TRAINING_TEXT
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with exactly `vocab_size` entries; prepends BOS like Llama tokenizers.

    Special tokens come first (BOS=0, EOS=1, PAD=2), then the 256 byte symbols, then merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.splitlines(), trainer=trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise ModelSpecError(
            f"the training text yields {tokenizer.get_vocab_size()} tokens, not {vocab_size}: "
            f"lower vocab_size in the model YAML or train on more text"
        )
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
    )
