"""Tokenizer and chat template: built from GGUF vocabulary data, loaded from a shard directory.

Owns turning text and chat messages into token ids and back. Uses the Hugging Face
`tokenizers` library: byte-level BPE with the GGUF's merges (`gpt2` tokenizers, e.g.
SmolLM2: digits split one by one, no prefix space), or SentencePiece-style BPE whose
merges are derived from the piece scores, with byte fallback (`llama` tokenizers, e.g.
Gemma 3). Renders the model's Jinja chat template. Never touches model weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from shards.gguf_model import TokenizerData

NORMAL_TOKEN_TYPE = 1        # GGUF token types
UNKNOWN_TOKEN_TYPE = 2
CONTROL_TOKEN_TYPE = 3
USER_DEFINED_TOKEN_TYPE = 4
SPACE = "\u2581"   # SentencePiece's visible space


def build_tokenizer(data: TokenizerData) -> Tokenizer:
    tokenizer = _sentencepiece_bpe(data) if data.model == "llama" else _byte_level_bpe(data)
    special = [
        AddedToken(token, special=True, normalized=False)
        for token, kind in zip(data.tokens, data.token_types, strict=False)
        if kind == CONTROL_TOKEN_TYPE
    ]
    tokenizer.add_special_tokens(special)
    user_defined = [
        AddedToken(token, normalized=False)
        for token, kind in zip(data.tokens, data.token_types, strict=False)
        if kind == USER_DEFINED_TOKEN_TYPE
    ]
    if user_defined:
        tokenizer.add_tokens(user_defined)
    return tokenizer


# Qwen2's pre-tokenizer split (llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2; HF's tokenizer.json):
# letters with one leading non-letter, single digits, punctuation runs, newlines, spaces.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level_bpe(data: TokenizerData) -> Tokenizer:
    vocab = {token: index for index, token in enumerate(data.tokens)}
    merges: list[tuple[str, str]] = []
    for merge in data.merges:
        left, right = merge.split(" ", 1)
        merges.append((left, right))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    if data.pre == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:   # SmolLM2 and GPT-2-style vocabularies: digits one by one, then GPT-2's split
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def sentencepiece_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges of a SentencePiece BPE vocabulary: every split of a normal piece into
    two pieces of the vocabulary, the piece with the higher score merged first (ties:
    by the parts' ids), as SentencePiece itself ranks them."""
    vocab = {token: index for index, token in enumerate(tokens)
             if types[index] in (NORMAL_TOKEN_TYPE, USER_DEFINED_TOKEN_TYPE)}
    candidates: list[tuple[float, int, int, str, str]] = []
    for piece, index in vocab.items():
        if types[index] != NORMAL_TOKEN_TYPE:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                candidates.append((-scores[index], vocab[left], vocab[right], left, right))
    candidates.sort()
    return [(left, right) for _, _, _, left, right in candidates]


def _sentencepiece_bpe(data: TokenizerData) -> Tokenizer:
    if data.scores is None:
        raise ValueError("a SentencePiece tokenizer needs tokenizer.ggml.scores")
    vocab = {token: index for index, token in enumerate(data.tokens)}
    merges = sentencepiece_merges(data.tokens, data.scores, data.token_types)
    unknown = next((token for token, kind in zip(data.tokens, data.token_types, strict=False)
                    if kind == UNKNOWN_TOKEN_TYPE), None)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=True,
                                     unk_token=unknown, ignore_merges=False))
    steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", SPACE)]
    if data.add_space_prefix:
        steps.insert(0, normalizers.Prepend(SPACE))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
                                          + ([decoders.Strip(SPACE, 1, 0)] if data.add_space_prefix else []))
    return tokenizer


class ChatTemplateError(ValueError):
    """The chat messages cannot be rendered (bad roles, or the template raised)."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


@dataclass(frozen=True)
class TextCodec:
    """Token ids <-> text, plus the chat template. Loaded from a shard directory."""

    tokenizer: Tokenizer
    chat_template: str | None
    eos_id: int
    bos_token: str
    eos_token: str
    bos_id: int | None = None
    add_bos: bool = False        # plain prompts start with BOS (Gemma); chat templates write their own

    @classmethod
    def load(cls, tokenizer_file: Path, template_file: Path | None, eos_id: int,
             bos_id: int | None, add_bos: bool = False) -> TextCodec:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        template = template_file.read_text() if template_file and template_file.is_file() else None
        eos_token = tokenizer.id_to_token(eos_id) or ""
        bos_token = (tokenizer.id_to_token(bos_id) or "") if bos_id is not None else ""
        return cls(tokenizer, template, eos_id, bos_token, eos_token, bos_id, add_bos and bos_id is not None)

    def encode(self, text: str) -> list[int]:
        """Token ids of a plain prompt (with BOS first where the model expects it)."""
        ids = self.encode_text(text)
        return [self.bos_id, *ids] if self.add_bos and self.bos_id is not None else ids

    def encode_text(self, text: str) -> list[int]:
        """Token ids of the text alone (special tokens written in it are recognised)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text for a chat, ending where the assistant's answer starts."""
        if self.chat_template is None:
            raise ChatTemplateError("this model is a base model (its GGUF has no chat template): send plain "
                                    "text to /v1/completions instead of chat messages")
        environment = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise_exception
        try:
            template = environment.from_string(self.chat_template)
            return template.render(messages=messages, add_generation_prompt=True,
                                   bos_token=self.bos_token, eos_token=self.eos_token)
        except jinja2.TemplateError as error:  # a template bug or a message the template rejects
            raise ChatTemplateError(f"chat template failed: {error}") from error

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return self.encode_text(self.render_chat(messages))
