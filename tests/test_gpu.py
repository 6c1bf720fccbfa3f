"""On an NVIDIA GPU: the GPU backends' real kernels against the definition, in value and gradient.

cuDNN's fused attention (with and without its sliding window, grouped-query heads, lengths that
are no multiple of a tile) and the Pallas Triton kernel, compiled for the GPU (not interpreted),
against the band-masked reference in float32 on the same 16-bit inputs; a coupled model with a
local fast path on cuDNN against the same model on `reference`; and training through
`fastslow_jax.train` on the GPU. Every test skips without a GPU: run them with
`JAX_PLATFORMS=cuda pytest -m gpu` on a machine with one.

Tolerances are relative to the largest magnitude of the reference, at least 1 (bfloat16 keeps 8
bits of mantissa, so a product of 64-term sums is good to about 1%); a window one token too long
or too short moves the outputs of W = 1 and W = 4 by tens of percent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from test_attention import band_reference
from fastslow_jax import metrics, models
from fastslow_jax.models import ModelConfig
from fastslow_jax.models import attention_kernels as attention_lib

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    jax.default_backend() != 'gpu',
    reason='needs an NVIDIA GPU (JAX_PLATFORMS=cuda pytest -m gpu on a machine with one)')]

FWD_TOL = 2e-2  # Of the reference's largest |value|.
GRAD_TOL = 4e-2


def qkv(length: int, heads: int, kv_heads: int, dtype=jnp.bfloat16, head_dim: int = 64):
  keys = jax.random.split(jax.random.key(0), 3)
  shapes = [(2, length, heads, head_dim)] + [(2, length, kv_heads, head_dim)] * 2
  return tuple(jax.random.normal(key, shape, jnp.float32).astype(dtype)
               for key, shape in zip(keys, shapes))


def value_and_grads(attend, q, k, v):
  weights = jax.random.normal(jax.random.key(7), q.shape, jnp.float32)
  loss = lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32) * weights)
  out = jax.jit(attend)(q, k, v)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  return np.asarray(out, np.float32), [np.asarray(g, np.float32) for g in grads]


def assert_close(got, want, tol: float, what: str) -> None:
  """|got - want| within `tol` of the reference's largest |value|, or of 1 where that is smaller
  (a window of one token has zero query and key gradients)."""
  scale = max(float(np.max(np.abs(want))), 1.0)
  error = np.max(np.abs(got - want)) / scale
  assert error < tol, f'{what}: max error {error:.3g} of the reference\'s largest |value|'


def assert_kernel_matches_definition(impl: str, length: int, window: int, heads=4, kv_heads=4,
                                     **blocks) -> None:
  q, k, v = qkv(length, heads, kv_heads)
  got = value_and_grads(lambda q, k, v: attention_lib.attention(
      q, k, v, causal=True, impl=impl, window=window, **blocks), q, k, v)
  want = value_and_grads(lambda q, k, v: band_reference(  # The definition, in float32.
      *(x.astype(jnp.float32) for x in (q, k, v)), window), q, k, v)
  assert_close(got[0], want[0], FWD_TOL, f'{impl} output')
  for name, a, b in zip('qkv', got[1], want[1]):
    assert_close(a, b, GRAD_TOL, f'{impl} d{name}')


@pytest.mark.parametrize('length,window,kv_heads', [
    (512, 0, 4), (300, 0, 1),  # Full causal; grouped-query heads, a length no tile divides.
    (512, 1, 4), (512, 4, 4), (300, 128, 2), (1024, 256, 4)])  # Sliding windows.
def test_cudnn_matches_the_definition(length, window, kv_heads):
  assert_kernel_matches_definition('cudnn', length, window, kv_heads=kv_heads)


def test_a_window_of_one_is_the_values_themselves():
  """W = 1: each query sees only its own key, so the output is v itself (to bfloat16)."""
  q, k, v = qkv(256, 4, 4)
  out = attention_lib.attention(q, k, v, causal=True, impl='cudnn', window=1)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(v, np.float32), atol=1e-2)


@pytest.mark.parametrize('length', [100, 1024])
def test_pallas_gpu_matches_the_definition(length):
  assert_kernel_matches_definition('pallas_gpu', length, 0, block_q=64, block_kv=64)


def test_windowed_coupled_model_on_cudnn_matches_reference():
  """Logits and parameter gradients of a coupled model (bfloat16, W = 24, P = 16) with its gates
  open, cuDNN against the reference kernels."""
  tokens = jax.random.randint(jax.random.key(0), (4, 257), 0, 256, dtype=jnp.int32)

  def run(impl: str):
    cfg = ModelConfig(arm='coupled', vocab_size=256, seq_len=256, d_model=128, num_layers=2,
                      num_heads=2, mlp_dim=256, P=16, slow_num_heads=2, phi_dim=256,
                      gate='channel', attention_impl=impl, fast_window=24, dtype='bfloat16')
    graphdef, params = nnx.split(models.build(cfg, rngs=3), nnx.Param)
    params = nnx.map_state(lambda path, p: p + 0.5 if 'gate' in path else p, params)

    def loss(params):
      logits = nnx.merge(graphdef, params)(tokens[:, :-1]).astype(jnp.float32)
      target = jax.nn.one_hot(tokens[:, 1:], 256)
      return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * target, -1)), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(logits), jax.tree.map(np.asarray, grads)

  (logits, grads), (want, want_grads) = run('cudnn'), run('reference')
  assert_close(logits, want, FWD_TOL, 'logits')
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(grads),
                               jax.tree_util.tree_leaves_with_path(want_grads)):
    assert_close(a.astype(np.float32), b.astype(np.float32), GRAD_TOL, jax.tree_util.keystr(path))


def test_training_on_the_gpu_with_cudnn_and_a_window(tmp_path):
  """`fastslow_jax.train` on one GPU, cuDNN with a local fast path in bfloat16: the first steps'
  losses follow the reference kernels' run and training lowers the loss."""
  from fastslow_jax import train

  def run(impl: str):
    config = tiny_config(**{'mesh.data': 1, 'model.attention_impl': impl, 'model.dtype':
                            'bfloat16', 'model.fast_window': 12, 'total_steps': 40,
                            'eval_every': 40, 'checkpoint_every': 40})
    workdir = tmp_path / impl
    train.train(config, workdir, devices=jax.devices()[:1])
    return {r['step']: r['loss'] for r in metrics.read_jsonl(workdir / 'metrics.jsonl')
            if 'loss' in r}

  got, want = run('cudnn'), run('reference')
  assert jax.devices()[0].platform == 'gpu' and sorted(got) == list(range(1, 41))
  np.testing.assert_allclose([got[s] for s in range(1, 6)], [want[s] for s in range(1, 6)],
                             rtol=1e-2)
  assert got[40] < got[1] - 0.05  # 0.09 in 40 steps of the same run on the CPU.
