"""A tiny random-weight LLaMA model in GGUF, for real llama-servers in tests and benches.

The weights are noise (the output is gibberish), but the server does all the real work: it
tokenizes with the real LLaMA vocabulary, keeps prompts in its slots' caches, reports
``timings``, and ``temperature: 0`` is deterministic. Bigger ``n_embd``/``n_layers`` make a
slower server (the routing bench's skew variant).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter, TokenType

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
EXTRA_TOKENS = ("<|im_start|>", "<|im_end|>")


def _field(reader: GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def write_tiny_model(out: Path, vocab_path: Path, n_embd: int = 128, n_layers: int = 2,
                     n_head: int = 4, n_ff: int | None = None, n_ctx: int = 4096, seed: int = 0) -> Path:
    """Write the model to ``out`` (F16 weights, ChatML template) and return its path."""
    reader = GGUFReader(str(vocab_path))
    tokens = list(_field(reader, "tokenizer.ggml.tokens")) + list(EXTRA_TOKENS)
    scores = list(_field(reader, "tokenizer.ggml.scores")) + [0.0] * len(EXTRA_TOKENS)
    types = list(_field(reader, "tokenizer.ggml.token_type")) + [int(TokenType.CONTROL)] * len(EXTRA_TOKENS)
    n_vocab = len(tokens)
    n_ff = n_ff or 2 * n_embd
    rng = np.random.default_rng(seed)

    writer = GGUFWriter(str(out), "llama")
    writer.add_name("llama-balancer-tiny")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(1)  # mostly F16
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(int(_field(reader, "tokenizer.ggml.bos_token_id")))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_unk_token_id(int(_field(reader, "tokenizer.ggml.unknown_token_id")))
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHATML)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(n_embd, dtype=np.float32)

    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", norm())
    # No output.weight: llama.cpp ties the output to token_embd, which halves the file.
    for layer in range(n_layers):
        blk = f"blk.{layer}."
        writer.add_tensor(blk + "attn_norm.weight", norm())
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(blk + name + ".weight", weight(n_embd, n_embd))
        writer.add_tensor(blk + "ffn_norm.weight", norm())
        writer.add_tensor(blk + "ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(blk + "ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(blk + "ffn_down.weight", weight(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
