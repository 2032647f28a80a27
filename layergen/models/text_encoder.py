"""The frozen CLIP text encoder ``T`` (LayerDiff section 3.2.1) and a tiny offline one.

``load_text_encoder`` loads transformers' ``CLIPTokenizer`` + ``CLIPTextModel`` by hub id or
local path (either a CLIP repository, or a pipeline / Stable Diffusion layout with
``tokenizer/`` and ``text_encoder/`` sub-folders). ``build_tiny_text_encoder`` writes a
tiny randomly initialised CLIP text model and a tokenizer whose vocabulary holds every word
of a given word list as a single token, in that same layout, so the demo and the tests run
offline through the same loading code.

Command: ``python -m layergen.models.text_encoder --out DIR`` builds it from the synthetic
scenes' vocabulary (:func:`layergen.data.shapes.vocabulary`).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"


def load_text_encoder(
    name_or_path: str,
    tokenizer_subfolder: str | None = None,
    text_encoder_subfolder: str | None = None,
) -> tuple[CLIPTokenizer, CLIPTextModel]:
    """Load a frozen CLIP tokenizer and text model by hub id or local path.

    A local directory holding ``tokenizer/`` and ``text_encoder/`` (the Stable Diffusion
    and layergen pipeline layout) uses those sub-folders unless others are given. The
    model is put in eval mode with ``requires_grad`` off.
    """
    root = Path(name_or_path)
    if root.is_dir() and tokenizer_subfolder is None and text_encoder_subfolder is None:
        if (root / "tokenizer").is_dir() and (root / "text_encoder").is_dir():
            tokenizer_subfolder, text_encoder_subfolder = "tokenizer", "text_encoder"
    tokenizer_kwargs = {"subfolder": tokenizer_subfolder} if tokenizer_subfolder else {}
    model_kwargs = {"subfolder": text_encoder_subfolder} if text_encoder_subfolder else {}
    tokenizer = CLIPTokenizer.from_pretrained(name_or_path, **tokenizer_kwargs)
    text_encoder = CLIPTextModel.from_pretrained(name_or_path, use_safetensors=True, **model_kwargs)
    text_encoder.requires_grad_(False).eval()
    return tokenizer, text_encoder


@torch.no_grad()
def encode_prompts(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: Sequence[str]
) -> Tensor:
    """Embed prompts: ``N`` strings -> last hidden states ``(N, S, D)``, ``S`` = max length.

    Prompts are padded/truncated to the tokenizer's ``model_max_length`` as in Stable
    Diffusion; the empty prompt "" gives the unconditional embedding.
    """
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = next(text_encoder.parameters()).device
    return text_encoder(tokens.input_ids.to(device)).last_hidden_state


def _bpe(word: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """CLIP's BPE on one pre-split word: merge the lowest-ranked pair until none applies."""
    while len(word) > 1:
        pairs = {(a, b) for a, b in zip(word[:-1], word[1:])}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(word):
            if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = tuple(merged)
    return word


def word_level_bpe(words: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Build a CLIP vocab and merges in which every word is one token.

    The base vocabulary is CLIP's byte alphabet (each symbol also with ``</w>``). For each
    word, BPE is simulated with the merges so far and the two leftmost remaining pieces
    are merged (appended with the highest rank) until the word is one token. Appended merges
    never change earlier words: their BPE always had a lower-ranked merge to apply.
    """
    alphabet = sorted(ByteLevel.alphabet())
    vocab_list = alphabet + [c + END_OF_WORD for c in alphabet]
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted({w.lower() for w in words if w.strip()}):
        if not word.isascii() or not word.isalnum():
            raise ValueError(f"build_tiny_text_encoder: word {word!r} is not a single ASCII word")
        pieces = (*word[:-1], word[-1] + END_OF_WORD)
        while len(pieces := _bpe(pieces, ranks)) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(ranks)
            vocab_list.append(pair[0] + pair[1])
    vocab_list += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    return vocab, merges


def build_tiny_text_encoder(
    out_dir: str | Path,
    vocabulary: Iterable[str],
    hidden_size: int = 32,
    num_layers: int = 2,
    max_length: int = 32,
    seed: int = 0,
    token_embedding_std: float = 1.0,
    position_embedding_std: float = 0.5,
) -> Path:
    """Write a tiny offline CLIP tokenizer + text model to ``out_dir``.

    Layout: ``out_dir/tokenizer`` (vocab.json, merges.txt, ...) and ``out_dir/text_encoder``
    (config.json + safetensors), loadable with :func:`load_text_encoder`. The model has
    ``num_layers`` layers of width ``hidden_size`` (4 heads), randomly initialised from
    ``seed``; each vocabulary word is a single token.

    A random encoder stands in for a pretrained CLIP, whose outputs keep each word apart.
    With CLIP's initialisation (embeddings of std 0.02) the random layers blur the words
    together (two shape words in the same place: cosine 0.89 after the final norm), so the
    token embeddings are drawn with ``token_embedding_std`` (1.0: cosine ~0.4) and the
    position embeddings with ``position_embedding_std`` (0.5: word order stays readable).

    Returns:
        ``out_dir`` as a ``Path``.
    """
    out_dir = Path(out_dir)
    vocab, merges = word_level_bpe(vocabulary)
    tokenizer_dir = out_dir / "tokenizer"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab))
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        vocab=str(tokenizer_dir / "vocab.json"),
        merges=str(tokenizer_dir / "merges.txt"),
        model_max_length=max_length,
    )
    tokenizer.save_pretrained(tokenizer_dir)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
        projection_dim=hidden_size,
    )
    torch.manual_seed(seed)
    model = CLIPTextModel(config)
    nn.init.normal_(model.get_input_embeddings().weight, std=token_embedding_std)
    nn.init.normal_(model.embeddings.position_embedding.weight, std=position_embedding_std)
    model.save_pretrained(out_dir / "text_encoder")
    logger.info("wrote tiny text encoder (%d tokens) to %s", len(vocab), out_dir)
    return out_dir


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m layergen.models.text_encoder --out DIR``: tiny encoder of the scenes."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--token-embedding-std", type=float, default=1.0)
    parser.add_argument("--position-embedding-std", type=float, default=0.5)
    args = parser.parse_args(argv)
    from layergen.data.shapes import vocabulary

    logging.basicConfig(level=logging.INFO)
    build_tiny_text_encoder(
        args.out, vocabulary(), args.hidden_size, args.num_layers, args.max_length, args.seed,
        args.token_embedding_std, args.position_embedding_std,
    )


if __name__ == "__main__":
    main()
