"""GGUF round trip: the tiny Llama written as llama.cpp would write it, read back by `load_gguf`.

`model.name_or_path` may name a `.gguf` file (reftflow/base_model.py). No real GGUF is small enough
for a unit test, so the tiny default model and its character tokenizer are written to one here with
the `gguf` package, the way llama.cpp's convert_hf_to_gguf.py converts a Llama (its tensor names,
its hyperparameter keys, its permutation of the Q and K rows, its tokenizer metadata), and read back
through the product's `load_gguf` and the `base` stage's `prepare_base`. If transformers' GGUF
loader, the `gguf` package or `load_gguf` loses or scrambles anything on the way, the weights stop
matching or greedy decoding changes, and these tests say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reftflow.config import ModelConfig
from reftflow.generation import generate_greedy
from reftflow.modeling import build_char_tokenizer, build_tiny_model

CFG = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_length=64)
PROMPTS = ["Q: 2+3?\nA:", "Q: What is 7 times 8?\nA:", "Hello, world!", "x = (4 - 1) * 9;\n"]
MAX_NEW_TOKENS = 12


def _llama_permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py): HF stores each head's rotary
    dimensions as two halves (rotate_half), ggml's rope pairs neighbouring ones, so the converter
    interleaves the halves of every head's rows in attn_q and attn_k. transformers' loader
    (LlamaTensorProcessor._reverse_permute_weights) undoes it; writing it here checks that it does."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, tokenizer, path: Path) -> Path:
    """Write a transformers `LlamaForCausalLM` and its tokenizer to a float32 GGUF at `path`, as
    llama.cpp's convert_hf_to_gguf.py does for the llama architecture (test code: only what the
    tiny model needs, no quantization, no rope scaling)."""
    import gguf

    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // n_head
    writer = gguf.GGUFWriter(str(path), "llama")  # general.architecture = "llama"
    writer.add_name("reftflow-tiny")
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    # The vocabulary as convert_hf_to_gguf.py's `get_vocab_base` writes a BPE tokenizer
    # (tokenizer.ggml.model "gpt2"): tokens by id, special ones CONTROL, the rest NORMAL. Its merge
    # list is empty (a character vocabulary merges nothing), and GGUFWriter drops an empty array, so
    # scores stand in: transformers derives the merges from them when the file has none, and finds
    # none to derive (no token is two others joined).
    vocab = tokenizer.get_vocab()
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "ids must be dense"
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)

    # llama.cpp's tensor names (gguf.TENSOR_NAMES for MODEL_ARCH.LLAMA). With tied embeddings the
    # converter writes no output.weight (llama.cpp reuses token_embd), and transformers reads
    # tie_word_embeddings=True from its absence.
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                 "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    state = model.state_dict()
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight":
            continue  # tied to model.embed_tokens.weight
        data = tensor.detach().to(torch.float32).cpu().numpy().copy()
        gguf_name = names[hf_name]
        if gguf_name.endswith(".attn_q.weight"):
            data = _llama_permute(data, n_head, n_head)
        elif gguf_name.endswith(".attn_k.weight"):
            data = _llama_permute(data, n_head, n_kv)
        writer.add_tensor(gguf_name, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny():
    """The tiny default model with its weights redrawn. Its own init (std 0.02, every norm weight 1)
    decodes one character over and over, and would not notice two norms swapped on the way; these
    weights give varied completions whose top two logits stay >= 0.009 apart at every step (far
    above float noise), so an exact comparison of token ids is sound."""
    tok = build_char_tokenizer()
    model = build_tiny_model(CFG, tok, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1 + 0.2 * noise if param.dim() == 1 else 0.5 * noise)
    return model, tok


@pytest.fixture(scope="module")
def gguf_path(tiny, tmp_path_factory):
    model, tok = tiny
    return write_llama_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")


def _generate_ids(model, tok, prompts):
    """Token ids of a plain `generate` (no EOS stop, so every step is compared)."""
    batch = tok(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=None,
                             pad_token_id=tok.pad_token_id, min_new_tokens=MAX_NEW_TOKENS)
    return out.tolist()


def test_load_gguf_round_trip(tiny, gguf_path):
    """What `load_gguf` reads back is the model and tokenizer that were written: same weights, same
    token ids for the prompts, same greedy completions."""
    from reftflow.base_model import load_gguf

    model, tok = tiny
    model2, tok2 = load_gguf(gguf_path)
    model2.eval()

    # The tokenizer: same ids, same special tokens, and decoding gives the text back.
    for prompt in PROMPTS:
        assert tok2(prompt)["input_ids"] == tok(prompt)["input_ids"], prompt
        assert tok2.decode(tok(prompt)["input_ids"]) == prompt
    assert (tok2.pad_token_id, tok2.eos_token_id, tok2.unk_token_id) == (tok.pad_token_id, tok.eos_token_id,
                                                                        tok.unk_token_id)

    # The weights, key by key (Q and K un-permuted, lm_head tied back to the embeddings).
    sd, sd2 = model.state_dict(), model2.state_dict()
    assert sorted(sd2) == sorted(sd)
    for key in sd:
        assert sd2[key].dtype == torch.float32, key
        assert torch.allclose(sd[key], sd2[key], atol=1e-6, rtol=0), key
    assert model2.lm_head.weight.data_ptr() == model2.model.embed_tokens.weight.data_ptr()
    assert not hasattr(model2.config, "quantization_config")  # so save_pretrained works
    c, c2 = model.config, model2.config
    for attr in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "intermediate_size", "max_position_embeddings", "head_dim", "tie_word_embeddings"):
        assert getattr(c2, attr) == getattr(c, attr), attr
    assert c2.rope_parameters["rope_theta"] == c.rope_parameters["rope_theta"]
    assert c2.rms_norm_eps == pytest.approx(c.rms_norm_eps)  # a float32 in the file

    # Non-persistent buffers (the rotary inv_freq) are in no state dict: a model rebuilt on the meta
    # device must get them some other way, or its first forward fails.
    meta = [name for name, buf in model2.named_buffers() if buf.is_meta]
    assert not meta, f"load_gguf left buffers on the meta device: {meta}"

    # Greedy decoding: identical token ids step by step, and identical texts.
    tok2.padding_side = tok.padding_side = "left"
    assert _generate_ids(model2, tok2, PROMPTS) == _generate_ids(model, tok, PROMPTS)
    assert generate_greedy(model2, tok2, PROMPTS, MAX_NEW_TOKENS) == generate_greedy(model, tok, PROMPTS,
                                                                                     MAX_NEW_TOKENS)


def test_prepare_base_converts_a_gguf(tiny, gguf_path, tmp_path):
    """The `base` stage turns a GGUF into a normal model directory that later stages load, and
    records where it came from."""
    from reftflow.base_model import prepare_base, resolve, sha256_files
    from reftflow.modeling import load_model

    model, tok = tiny
    out_dir = tmp_path / "base"
    info = prepare_base(resolve(str(gguf_path)), out_dir)

    source = json.loads((out_dir / "source.json").read_text())
    assert source["kind"] == "gguf" and source["location"] == str(Path(gguf_path).resolve())
    assert source["sha256"] == sha256_files([Path(gguf_path)]) == info["sha256"]
    assert len(source["converted_sha256"]) == 64

    model3, tok3 = load_model(out_dir)
    sd, sd3 = model.state_dict(), model3.state_dict()
    assert sorted(sd3) == sorted(sd)
    for key in sd:
        assert torch.allclose(sd[key], sd3[key], atol=1e-6, rtol=0), key
    assert tok3(PROMPTS[0])["input_ids"] == tok(PROMPTS[0])["input_ids"]
    assert generate_greedy(model3, tok3, PROMPTS, MAX_NEW_TOKENS) == generate_greedy(model, tok, PROMPTS,
                                                                                     MAX_NEW_TOKENS)
