"""Tiny offline CLIP text encoder: one token per word, same loading path as the real one."""

import pytest
import torch

from layergen.data.shapes import vocabulary
from layergen.models.text_encoder import (
    build_tiny_text_encoder,
    encode_prompts,
    load_text_encoder,
    main,
    word_level_bpe,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("te")
    build_tiny_text_encoder(out, vocabulary(), hidden_size=16, num_layers=1, max_length=16)
    return out


def test_every_vocabulary_word_is_one_token(tiny):
    tokenizer, _ = load_text_encoder(str(tiny))
    words = vocabulary()
    ids = [tokenizer(w, add_special_tokens=False).input_ids for w in words]
    assert all(len(i) == 1 for i in ids)
    assert len({i[0] for i in ids}) == len(words)  # distinct tokens
    sentence = tokenizer("a large red star on the left").input_ids
    assert len(sentence) == 7 + 2  # BOS + 7 words + EOS


def test_bpe_handles_words_sharing_prefixes():
    vocab, merges = word_level_bpe(["red", "reds", "green", "greenery", "re"])
    for word in ["red", "reds", "green", "greenery", "re"]:
        assert word + "</w>" in vocab
    assert len(merges) == len(set(merges))


def test_frozen_and_encode_shapes(tiny):
    tokenizer, text_encoder = load_text_encoder(str(tiny))
    assert not any(p.requires_grad for p in text_encoder.parameters())
    assert not text_encoder.training
    emb = encode_prompts(tokenizer, text_encoder, ["a red star", "", "a blue circle"])
    assert emb.shape == (3, 16, 16)
    assert not torch.allclose(emb[0], emb[2])
    # the same checkpoint loads by explicit sub-folders (SD repository layout)
    _, again = load_text_encoder(str(tiny), "tokenizer", "text_encoder")
    torch.testing.assert_close(encode_prompts(tokenizer, again, ["a red star"]), emb[:1])


def test_rejects_non_words(tmp_path):
    with pytest.raises(ValueError, match="single ASCII word"):
        build_tiny_text_encoder(tmp_path, ["red", "two words"])


def test_command_builds_from_scene_vocabulary(tmp_path):
    main(["--out", str(tmp_path / "te"), "--hidden-size", "8", "--num-layers", "1"])
    tokenizer, text_encoder = load_text_encoder(str(tmp_path / "te"))
    assert text_encoder.config.hidden_size == 8
    assert tokenizer.model_max_length == 32


def _shape_word_similarity(root) -> float:
    """Mean cosine between the outputs of eight shape words at the same place in a prompt."""
    tokenizer, text_encoder = load_text_encoder(str(root))
    shapes = ["circle", "square", "triangle", "star", "heart", "hexagon", "diamond", "cross"]
    emb = encode_prompts(tokenizer, text_encoder, [f"a large red {s}" for s in shapes])
    words = torch.nn.functional.normalize(emb[:, 4], dim=-1)  # BOS a large red <shape>
    similarity = words @ words.T
    return similarity[~torch.eye(len(shapes), dtype=torch.bool)].mean().item()


def test_words_stay_apart_with_the_default_embedding_scale(tmp_path):
    # CLIP's own initialisation (std 0.02) blurs the words: the stand-in for a pretrained
    # encoder keeps them apart, as a pretrained CLIP does
    build_tiny_text_encoder(tmp_path / "default", vocabulary())
    build_tiny_text_encoder(tmp_path / "clip_init", vocabulary(), token_embedding_std=0.02,
                            position_embedding_std=0.02)
    assert _shape_word_similarity(tmp_path / "clip_init") > 0.8
    assert _shape_word_similarity(tmp_path / "default") < 0.5
