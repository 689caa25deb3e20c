"""Word-level tokenizer for video titles and captions -> `text_tokens` ids (a YT8M-style extension).

Built on Hugging Face `tokenizers`: text is NFKC-normalized and lowercased, split at whitespace
and punctuation (each punctuation mark is a token), and every word maps to one id. Id 0 is
`[PAD]` (the batch padding id; no text ever encodes to it) and id 1 is `[UNK]` (every word
outside the vocabulary); words take ids 2, 3, ... from the most to the least frequent, ties in
code-point order, so the same texts always give the same vocabulary. All ids are below
`vocab_size`; set config.data.text_vocab_size to at least that.

`[PAD]` and `[UNK]` are vocabulary entries only, not special tokens the tokenizer matches in raw
text: a caption containing the string "[PAD]" encodes as the words "[", "pad", "]".
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, trainers

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
_SPECIALS = {PAD: PAD_ID, UNK: UNK_ID}


def _pipeline(vocab: dict[str, int]) -> tokenizers.Tokenizer:
    """A word-level tokenizer over `vocab` with this module's normalizer and pre-tokenizer."""
    tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    return tokenizer


class Tokenizer:
    """Text -> int32 token ids; `[PAD]` = 0, `[UNK]` = 1, every id < `vocab_size`."""

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        for token, expected in _SPECIALS.items():
            if vocab.get(token) != expected:
                raise ValueError(
                    f"vocabulary has {token} at id {vocab.get(token)}, expected {expected}"
                )
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise ValueError(f"vocabulary ids are not 0..{len(vocab) - 1} without gaps")
        self._tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of ids (special tokens included): every id is below it."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, max_tokens: int | None) -> np.ndarray:
        """int32 ids of `text`, unpadded, cut to the first `max_tokens` (None: all).

        Truncation is silent: long captions are normal and the pipeline keeps only
        config.data.max_text_tokens anyway.
        """
        if max_tokens is not None and max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0 or None, got {max_tokens}")
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return np.array(ids[:max_tokens], np.int32)

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """The vocabulary entries of `ids` (normalized words, for inspection)."""
        return [self._tokenizer.id_to_token(int(i)) for i in ids]

    def save(self, path: str | os.PathLike) -> None:
        """Writes the tokenizer as `tokenizers` JSON (loadable by `tokenizers` alone, too)."""
        self._tokenizer.save(os.fspath(path), pretty=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Reads a file written by `save`; errors name the file."""
        path = os.fspath(path)
        with open(path, encoding="utf-8") as f:
            data = f.read()
        try:
            return cls(tokenizers.Tokenizer.from_str(data))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"{path}: not a vmjax text tokenizer ({e})") from None


def build_vocabulary(texts: Iterable[str], vocab_size: int, min_frequency: int = 1) -> Tokenizer:
    """A tokenizer whose vocabulary is `[PAD]`, `[UNK]` and the most frequent words of `texts`.

    Args:
      vocab_size: most ids, the two special tokens included (fewer when `texts` have fewer
        words seen at least `min_frequency` times).
      min_frequency: words seen fewer times stay out (and encode as `[UNK]`).
    """
    if vocab_size < len(_SPECIALS):
        raise ValueError(f"vocab_size must be >= {len(_SPECIALS)} ([PAD], [UNK]), got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    vocab = dict(_SPECIALS)
    if vocab_size > len(_SPECIALS):
        # Trained without special tokens, so they cannot be matched in raw text; the words then
        # move up by two ids. The trainer orders by count, then by word (deterministic).
        word_counter = _pipeline({UNK: 0})
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size - len(_SPECIALS),
            min_frequency=min_frequency,
            special_tokens=[],
            show_progress=False,
        )
        word_counter.train_from_iterator(_checked(texts), trainer)
        words = word_counter.get_vocab(with_added_tokens=False)
        vocab.update({word: i + len(_SPECIALS) for word, i in words.items()})
    return Tokenizer(_pipeline(vocab))


def _checked(texts: Iterable[str]) -> Iterator[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not one string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, expected str")
        yield text


def _lines(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\r\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vmjax.data.text",
        description=(
            "Build a word-level vocabulary for video titles/captions (text_tokens ids): "
            "[PAD]=0, [UNK]=1, then the most frequent words after NFKC normalization and "
            "lowercasing. Set config.data.text_vocab_size to at least the printed size."
        ),
    )
    parser.add_argument("--texts", required=True, help="UTF-8 text file, one text per line")
    parser.add_argument("--out", required=True, help="tokenizer JSON file to write")
    parser.add_argument("--vocab_size", type=int, required=True, help="most ids, [PAD]/[UNK] in")
    parser.add_argument(
        "--min_frequency", type=int, default=1, help="words seen fewer times map to [UNK]"
    )
    args = parser.parse_args(argv)
    try:
        tokenizer = build_vocabulary(_lines(args.texts), args.vocab_size, args.min_frequency)
    except UnicodeDecodeError as e:
        parser.exit(1, f"{parser.prog}: error: {args.texts} is not UTF-8 ({e})\n")
    except (ValueError, OSError) as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    try:
        tokenizer.save(args.out)
    except Exception as e:  # tokenizers raises a bare Exception when it cannot write
        parser.exit(1, f"{parser.prog}: error: cannot write {args.out} ({e})\n")
    print(f"{args.out}: vocabulary of {tokenizer.vocab_size} ids", file=sys.stderr)


if __name__ == "__main__":
    main()
