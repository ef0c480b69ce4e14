"""Text prompts: a word vocabulary and a small transformer text encoder, trained with the U-Net.

No pretrained text model can be had offline, so, as in GLIDE (Nichol et al. 2022, sec. 2.3) and
Imagen's ablations (Saharia et al. 2022), the encoder is learned from scratch together with the
denoiser: words -> token embeddings + learned positions -> pre-norm transformer layers (Vaswani et
al. 2017). Its token features enter the U-Net by cross-attention (Rombach et al. 2022, sec. 3.3);
the first token's feature, pooled, is added to the time embedding (GLIDE, Imagen).

Token id 0 is padding (an empty prompt is all padding: "no text"), 1 an unknown word, 2 the start
token every prompt begins with, so even an empty prompt has one key to attend to.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

PAD, UNK, START = 0, 1, 2
SPECIAL = ("<pad>", "<unk>", "<start>")
VOCAB_NAME = "vocab.json"


def words(text: str) -> list[str]:
    """Lower-case words and numbers: "flag: Japan" -> ["flag", "japan"], "food_drink" -> ["food", "drink"]."""
    return re.findall(r"[a-z0-9]+", text.lower())


def data_texts(data) -> list[str]:
    """The texts a text model learns its words from: every name, keyword and class name of a data set."""
    return [*data.names.tolist(), *(k.replace("|", " ") for k in data.keywords.tolist()), *data.class_names]


class Vocabulary:
    """Word <-> id. ``encode`` returns fixed-length ids and the words it does not know."""

    def __init__(self, tokens: list[str], max_tokens: int = 16):
        if list(tokens[:len(SPECIAL)]) != list(SPECIAL) or len(set(tokens)) != len(tokens):
            raise ValueError(f"a vocabulary starts with {SPECIAL} and lists each word once")
        self.tokens, self.max_tokens = list(tokens), int(max_tokens)
        self.index = {w: i for i, w in enumerate(self.tokens)}

    @classmethod
    def from_texts(cls, texts, min_count: int = 1, max_tokens: int = 16) -> "Vocabulary":
        counts = Counter(w for text in texts for w in words(text))
        return cls([*SPECIAL, *sorted(w for w, c in counts.items() if c >= min_count)], max_tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, prompt: str) -> tuple[list[int], list[str]]:
        """(ids of length max_tokens: start, words..., padding; unknown words). Words past the length
        are dropped (``overflow`` names them); an empty prompt is all padding."""
        found = words(prompt)
        if not found:
            return [PAD] * self.max_tokens, []
        ids = [START] + [self.index.get(w, UNK) for w in found][:self.max_tokens - 1]
        unknown = [w for w in found if w not in self.index]
        return ids + [PAD] * (self.max_tokens - len(ids)), list(dict.fromkeys(unknown))

    def overflow(self, prompt: str) -> list[str]:
        """The words of ``prompt`` past the ``max_tokens - 1`` the model reads (after the start token),
        which ``encode`` drops, so callers can say so."""
        return words(prompt)[self.max_tokens - 1:]

    def sha256(self) -> str:
        """A hash of the words in their order and ``max_tokens`` (the canonical JSON of both), which a
        text model's config.json records so a reordered or edited vocab.json fails to load."""
        canonical = json.dumps({"max_tokens": self.max_tokens, "tokens": self.tokens}, ensure_ascii=False,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def encode_batch(self, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([self.encode(p)[0] for p in prompts], dtype=torch.long)

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / VOCAB_NAME
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"max_tokens": self.max_tokens, "tokens": self.tokens}, indent=0))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike, vocab_size: int) -> "Vocabulary":
        """Strict: the file must exist and hold exactly the ``vocab_size`` words the model was built for."""
        path = Path(folder) / VOCAB_NAME
        try:
            data = json.loads(path.read_text())
            vocab = cls(data["tokens"], data["max_tokens"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: a text model needs its vocabulary as JSON ({err})") from err
        if len(vocab) != vocab_size:
            raise ValueError(f"{path} holds {len(vocab)} words but the model was built for {vocab_size}")
        return vocab


class TextEncoder(nn.Module):
    """ids (N, L) -> token features (N, L, dim) and a key mask (N, L), True where a token is real."""

    def __init__(self, vocab_size: int, dim: int = 128, layers: int = 2, heads: int = 4, max_tokens: int = 16):
        super().__init__()
        self.token = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(0.02 * torch.randn(max_tokens, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        real = ids != PAD
        real[:, 0] = True  # an empty prompt keeps one (padding) key, so attention is always defined
        h = self.token(ids) + self.position[: ids.shape[1]]
        # training on 16 tokens: the plain matmuls' backward beats the fused kernel's (as in unet.attend)
        with sdpa_kernel(SDPBackend.MATH) if torch.is_grad_enabled() else nullcontext():
            h = self.layers(h, src_key_padding_mask=~real)
        return self.norm(h), real
