"""Captions as the text tower sees them: caption text of a sample, and the ``tokenizers`` tokenizer.

One representation for every tokenizer: a ``tokenizers.Tokenizer`` (a ``tokenizer.json``).  A pretrained XLM-R's
fast tokenizer is one (``AutoTokenizer.from_pretrained(...).backend_tokenizer``); offline, one is trained on the
training captions (byte-level BPE, lower-cased, XLM-R's special ids ``<s>=0 <pad>=1 </s>=2 <unk>=3``).  Every
caption becomes ``<s> tokens </s>`` truncated and padded to ``context_length + 2`` ids, as the MAWS release's
tokenizer transform does.
"""

from __future__ import annotations

import os

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # loaders fork workers; keep tokenizers single-threaded

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, as XLM-R / fairseq
TOKENIZER_FILE = "tokenizer.json"


def caption_text(meta: dict) -> str:
    """The text paired with an image: its caption (``KEY.txt`` or json ``caption``, hashtags kept as written),
    or, for an image with only a json ``hashtags`` list, the hashtags joined; "" when it has neither."""
    caption = meta.get("caption")
    if isinstance(caption, str) and caption.strip():
        return caption.strip()
    tags = meta.get("hashtags")
    if isinstance(tags, list) and tags:
        return " ".join(t if str(t).startswith("#") else f"#{t}" for t in map(str, tags))
    return ""


def configure(tokenizer, context_length: int):
    """Truncate to ``context_length`` tokens + <s> </s> and pad to exactly that many ids."""
    from tokenizers.processors import TemplateProcessing

    if tokenizer.token_to_id("<s>") is None or tokenizer.token_to_id("</s>") is None:
        raise ValueError("the tokenizer has no <s> / </s> tokens: use an XLM-R tokenizer or one trained by mawstron")
    if tokenizer.post_processor is None:
        tokenizer.post_processor = TemplateProcessing(
            single="<s> $A </s>", special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("<s>", "</s>")])
    length = context_length + 2
    tokenizer.enable_truncation(max_length=length)
    pad = "<pad>" if tokenizer.token_to_id("<pad>") is not None else "</s>"
    tokenizer.enable_padding(length=length, pad_id=tokenizer.token_to_id(pad), pad_token=pad)
    return tokenizer


def train_tokenizer(texts, vocab_size: int, context_length: int):
    """A byte-level BPE tokenizer trained on ``texts`` (an iterable of strings)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return configure(tokenizer, context_length)


def load_tokenizer(source: str, context_length: int):
    """A ``tokenizer.json`` file, a folder holding one, or a Hugging Face tokenizer name (``xlm-roberta-base``)."""
    from tokenizers import Tokenizer

    path = os.path.join(source, TOKENIZER_FILE) if os.path.isdir(source) else source
    if os.path.isfile(path):
        return configure(Tokenizer.from_file(path), context_length)
    if os.path.splitext(source)[1] == ".json":
        raise FileNotFoundError(f"tokenizer file {source!r} does not exist")
    try:
        from transformers import AutoTokenizer

        backend = AutoTokenizer.from_pretrained(source).backend_tokenizer
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load tokenizer {source!r}: not a tokenizer.json, a folder with one, or a "
                                f"reachable Hugging Face tokenizer ({str(e).splitlines()[0][:160]})") from None
    return configure(backend, context_length)


def tokenize(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """``{"input_ids", "attention_mask"}``: int64 ``[len(texts), context_length + 2]``."""
    encodings = tokenizer.encode_batch(list(texts))
    return {"input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)}
