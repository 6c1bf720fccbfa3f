"""The Hugging Face Llama architecture (`LlamaForCausalLM`) and this zoo's dense model, mapped.
Imports no jax.

    fields = llama.model_fields(hf_config)      # config.json -> ModelConfig fields (or refuses)
    hf_config = llama.hf_config(model_cfg, ...)  # and back
    for t in llama.tensors(model_cfg): t.hf, t.ours, t.to_ours(array), t.to_hf(array)

One layer of each is the same function: RMSNorm (x * rsqrt(mean(x^2) + eps) * scale, in float32),
causal attention with rotary positions (scale 1/sqrt(head_dim); key and value head g serving
query heads [g * H/KVH, (g+1) * H/KVH)), RMSNorm, SwiGLU (silu(x W_gate) * (x W_up) W_down).
A torch Linear stores its weight as [out, in], ours are [in, out] with the heads split out:

    q_proj [H*hd, D]  <->  wq [D, H, hd]        o_proj [D, H*hd]  <->  wo [H, hd, D]
    k_proj, v_proj [KVH*hd, D]  <->  wk, wv [D, KVH, hd]
    gate_proj, up_proj [F, D]  <->  w_gate, w_up [D, F]     down_proj [D, F]  <->  w_down [F, D]
    lm_head [V, D]  <->  head/w [D, V]                     embed_tokens [V, D]  <->  embed/table

Rotary layout: Hugging Face's Llama rotates the two halves of each head (`rotate_half`: x1 the
first half, x2 the second, frequencies theta^(-2i/hd)), and so does `layers.rotary`, so q_proj
and k_proj rows need no permutation here (Meta's original checkpoints interleave the pairs; the
Hugging Face conversion script has already permuted them). The logits tests check this against
transformers numerically. An option this mapping does not implement is refused in one line,
never approximated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from fastslow_jax.errors import UsageError

MODEL_TYPE = 'llama'
ARCHITECTURE = 'LlamaForCausalLM'
# The model fields a Llama configuration determines (the rest are this zoo's own).
FIELDS = ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'num_kv_heads', 'mlp_dim',
          'rope_theta', 'norm_eps', 'tie_embeddings')
# Tensors a checkpoint may hold that are derived, not parameters.
DERIVED_SUFFIXES = ('rotary_emb.inv_freq',)


def _off(value) -> bool:
  return not value


def _rope_plain(value) -> bool:
  return not value or value.get('rope_type', value.get('type', 'default')) == 'default'


# config.json options this zoo does not implement: (key, accepted, what it is).
UNSUPPORTED: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ('hidden_act', lambda v: v in (None, 'silu'), 'an activation other than silu'),
    ('attention_bias', _off, 'attention biases'),
    ('mlp_bias', _off, 'MLP biases'),
    ('rope_scaling', _rope_plain, 'rope scaling'),
    ('rope_parameters', _rope_plain, 'rope scaling'),
    ('sliding_window', lambda v: v is None, 'sliding-window attention'),
    ('use_sliding_window', _off, 'sliding-window attention'),
    ('layer_types', lambda v: not v or set(v) == {'full_attention'}, 'mixed attention layers'),
    ('quantization_config', lambda v: v is None, 'quantized weights'),
)


def model_fields(hf: dict[str, Any], where: str) -> dict[str, Any]:
  """The `ModelConfig` fields (`FIELDS`) of a Llama config.json; a one-line UsageError naming an
  architecture or an option this zoo does not implement."""
  model_type = hf.get('model_type')
  if model_type != MODEL_TYPE or any(a != ARCHITECTURE for a in hf.get('architectures') or ()):
    raise UsageError(f'{where} is a {model_type!r} model ({", ".join(hf.get("architectures") or [])}'
                     f'): only {ARCHITECTURE} (model_type {MODEL_TYPE!r}) converts.')
  for key, accepted, what in UNSUPPORTED:
    if not accepted(hf.get(key)):
      raise UsageError(f'{where} uses {what} ({key}={hf[key]!r}), which this zoo does not '
                       'implement: only plain Llama layers convert.')
  d, heads = hf['hidden_size'], hf['num_attention_heads']
  if hf.get('head_dim') not in (None, d // heads) or d % heads:
    raise UsageError(f'{where} has head_dim={hf.get("head_dim")} with hidden_size={d} and '
                     f'{heads} heads: this zoo needs head_dim = hidden_size / num_attention_heads.')
  kv = hf.get('num_key_value_heads') or heads
  theta = (hf.get('rope_parameters') or {}).get('rope_theta', hf.get('rope_theta', 10_000.0))
  return dict(vocab_size=int(hf['vocab_size']), d_model=int(d),
              num_layers=int(hf['num_hidden_layers']), num_heads=int(heads),
              num_kv_heads=0 if kv == heads else int(kv), mlp_dim=int(hf['intermediate_size']),
              rope_theta=float(theta), norm_eps=float(hf.get('rms_norm_eps', 1e-6)),
              tie_embeddings=bool(hf.get('tie_word_embeddings', False)))


def hf_config(cfg, *, dtype: str, eos_id: int | None = None) -> dict[str, Any]:
  """The config.json of `LlamaForCausalLM` for the dense model of `cfg` (a ModelConfig), its
  tensors stored in `dtype`; `max_position_embeddings` is the context the model trained at."""
  if cfg.fast_window:
    raise UsageError(f'model.fast_window={cfg.fast_window} (a local fast path) has no '
                     f'{ARCHITECTURE} equivalent: only runs attending over the whole context '
                     'export.')
  theta = float(cfg.rope_theta)
  return {
      'architectures': [ARCHITECTURE], 'model_type': MODEL_TYPE,
      'vocab_size': cfg.vocab_size, 'hidden_size': cfg.d_model,
      'intermediate_size': cfg.mlp_dim, 'num_hidden_layers': cfg.num_layers,
      'num_attention_heads': cfg.num_heads, 'num_key_value_heads': cfg.kv_heads,
      'head_dim': cfg.head_dim, 'hidden_act': 'silu', 'rms_norm_eps': float(cfg.norm_eps),
      'rope_theta': theta, 'rope_parameters': {'rope_type': 'default', 'rope_theta': theta},
      'rope_scaling': None, 'attention_bias': False, 'mlp_bias': False,
      'attention_dropout': 0.0, 'tie_word_embeddings': bool(cfg.tie_embeddings),
      'max_position_embeddings': cfg.seq_len, 'bos_token_id': None, 'eos_token_id': eos_id,
      'pad_token_id': None, 'torch_dtype': dtype, 'dtype': dtype, 'use_cache': True,
  }


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One parameter under both names: `hf` in the checkpoint (of `shape` there), `ours` its
  unrolled path, and its value converted each way (numpy transposes and reshapes: exact)."""
  hf: str
  shape: tuple[int, ...]
  ours: tuple
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _same(x):
  return x


def _transpose(x):
  return x.T


def tensors(cfg) -> list[Tensor]:
  """Every tensor of the dense model of `cfg` (a ModelConfig), in checkpoint order."""
  v, d, f, hd = cfg.vocab_size, cfg.d_model, cfg.mlp_dim, cfg.head_dim
  q, kv = cfg.num_heads * hd, cfg.kv_heads * hd
  heads_in = (lambda w: w.T.reshape(d, -1, hd), lambda w: w.reshape(d, -1).T)  # q, k, v
  heads_out = (lambda w: w.T.reshape(-1, hd, d), lambda w: w.reshape(-1, d).T)  # o
  linear, same = (_transpose, _transpose), (_same, _same)
  per_layer = (
      ('input_layernorm.weight', (d,), ('attn_norm', 'scale'), same),
      ('self_attn.q_proj.weight', (q, d), ('fast', 'wq'), heads_in),
      ('self_attn.k_proj.weight', (kv, d), ('fast', 'wk'), heads_in),
      ('self_attn.v_proj.weight', (kv, d), ('fast', 'wv'), heads_in),
      ('self_attn.o_proj.weight', (d, q), ('fast', 'wo'), heads_out),
      ('post_attention_layernorm.weight', (d,), ('mlp_norm', 'scale'), same),
      ('mlp.gate_proj.weight', (f, d), ('mlp', 'w_gate'), linear),
      ('mlp.up_proj.weight', (f, d), ('mlp', 'w_up'), linear),
      ('mlp.down_proj.weight', (d, f), ('mlp', 'w_down'), linear),
  )
  out = [Tensor('model.embed_tokens.weight', (v, d), ('embed', 'table'), *same)]
  out += [Tensor(f'model.layers.{i}.{name}', shape, ('blocks', i, *path), *convert)
          for i in range(cfg.num_layers) for name, shape, path, convert in per_layer]
  out.append(Tensor('model.norm.weight', (d,), ('final_norm', 'scale'), *same))
  if not cfg.tie_embeddings:
    out.append(Tensor('lm_head.weight', (v, d), ('head', 'w'), *linear))
  return out
