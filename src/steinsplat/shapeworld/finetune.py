"""Start a prior's training from a trained prior folder (`train prior --init-from FOLDER`).

The UNet is loaded into diffusers' `UNet2DConditionModel` (the class training uses), the text
encoder with its token embedding grown to today's `prior.vocabulary()`: the folder's tokenizer must
be a prefix of it (the words added since, e.g. the texture words, come last), its rows are copied,
and each new word's row starts at the mean of the old word rows (a neutral start the fine-tune moves).
Config (resolution, camera encoding, text size) comes from the folder; the training record is reset.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def prior_from_folder(folder: str | Path, guidance_scale: float = 1.0):  # -> ShapeWorldPrior (trainable)
    """A trainable prior initialised from `folder` (see the module docstring); `guidance_scale` is the
    default stored with the fine-tuned weights."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from .prior import (
        PRIOR_CONFIG_NAME, TEXT_ENCODER_WEIGHTS, PriorConfig, ShapeWorldPrior, ShapeWorldTextEncoder, ShapeWorldTokenizer,
        TextEncoderConfig, build_tokenizer, scheduler_config, vocabulary,
    )

    folder = Path(folder)
    if not (folder / PRIOR_CONFIG_NAME).exists():
        raise FileNotFoundError(f"--init-from {folder}: no {PRIOR_CONFIG_NAME} there; pass a prior folder "
                                "(e.g. src/steinsplat/assets/shapeworld/prior)")
    stored = json.loads((folder / PRIOR_CONFIG_NAME).read_text())
    stored.setdefault("camera_encoding", "angles")
    stored["training"] = {}
    config = PriorConfig(**{**stored, "default_guidance_scale": guidance_scale})
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True)

    old_vocab = ShapeWorldTokenizer.from_pretrained(folder / "tokenizer").tokenizer.get_vocab()  # {word: id}
    new_vocab = vocabulary()
    old_words = [w for w, _ in sorted(old_vocab.items(), key=lambda kv: kv[1])]
    if new_vocab[: len(old_words)] != old_words:
        raise ValueError(f"--init-from {folder}: its vocabulary {old_words} is not a prefix of today's {new_vocab}; "
                         "a fine-tune can only add words at the end (prior.vocabulary)")
    te_cfg = json.loads((folder / "text_encoder" / "config.json").read_text())
    old_state = load_file(str(folder / "text_encoder" / TEXT_ENCODER_WEIGHTS))
    text = ShapeWorldTextEncoder(TextEncoderConfig(**{**te_cfg, "vocab_size": len(new_vocab)}))
    tok_w = old_state["tok.weight"]  # [V_old, h]
    n_old = tok_w.shape[0]
    grown = torch.empty(len(new_vocab), tok_w.shape[1])  # [V_new, h]
    grown[:n_old] = tok_w
    grown[n_old:] = tok_w[2:].mean(0, keepdim=True)  # mean over the words ([PAD], [UNK] excluded)
    text.load_state_dict({**old_state, "tok.weight": grown})
    tok = ShapeWorldTokenizer(build_tokenizer(), max_length=text.config.max_length)
    return ShapeWorldPrior(unet, text, tok, DDPMScheduler(**scheduler_config()), config)
