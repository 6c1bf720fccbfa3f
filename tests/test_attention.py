"""Fused attention backends: parity with `reference`, the padding rule, config and platform errors,
and the splash kernels in the TPU ahead-of-time compile of the real train step.

The Pallas kernels run here in interpret mode (CPU). Tolerances are those of splash's own tests
for float32 (forward 3e-3; gradients atol 2e-2, rtol 3e-2), also used for the Triton kernel,
whose own tests only cover float16 (looser: 0.05 to 0.1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fastslow_jax import models, sharding
from fastslow_jax.configs.schema import SHARDING_RULES
from fastslow_jax.models import ModelConfig, attention_backends
from fastslow_jax.models import attention_kernels as attention_lib

ROOT = Path(__file__).resolve().parents[1]
FWD_TOL = dict(atol=3e-3, rtol=3e-3)
GRAD_TOL = dict(atol=2e-2, rtol=3e-2)


def qkv(length: int, heads: int = 2, head_dim: int = 16, batch: int = 2, seed: int = 0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(key, (batch, length, heads, head_dim), jnp.float32)
               for key in keys)


def value_and_grads(impl: str, q, k, v, **blocks):
  """Attention output and the gradients of a fixed random projection of it w.r.t. q, k, v."""
  weights = jax.random.normal(jax.random.key(7), q.shape)

  def loss(q, k, v):
    out = attention_lib.attention(q, k, v, causal=True, impl=impl, **blocks)
    return jnp.sum(out * weights), out

  with attention_lib.interpret_kernels():
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return np.asarray(out), [np.asarray(g) for g in grads]


def assert_matches_reference(impl: str, q, k, v, **blocks):
  out, grads = value_and_grads(impl, q, k, v, **blocks)
  want, want_grads = value_and_grads('reference', q, k, v)
  assert out.shape == want.shape and out.dtype == want.dtype
  np.testing.assert_allclose(out, want, **FWD_TOL)
  for name, got, ref in zip('qkv', grads, want_grads):
    np.testing.assert_allclose(got, ref, err_msg=f'd{name}', **GRAD_TOL)


# --------------------------------------------------------------------------- kernel parity


# Short lengths are the slow path's pooled sequences (N = T/P); 130 pads to two 128-tiles.
@pytest.mark.parametrize('length', [3, 130, *(pytest.param(n, marks=pytest.mark.slow)
                                             for n in (1, 8, 64))])
def test_splash_matches_reference(length):
  assert_matches_reference('splash', *qkv(length))


def test_splash_with_unequal_tiles_matches_reference():
  # 384 positions: query tiles of 128, key tiles of 256 do not divide it, so they shrink to 128.
  assert attention_backends.tile('splash', 256, 384) == (384, 128)
  assert_matches_reference('splash', *qkv(256, heads=1, batch=1), block_q=128, block_kv=256)


@pytest.mark.parametrize('length', [3, 100, *(pytest.param(n, marks=pytest.mark.slow)
                                             for n in (1, 16))])
def test_pallas_gpu_matches_reference(length):
  assert_matches_reference('pallas_gpu', *qkv(length), block_q=32, block_kv=32)


def test_padding_never_reaches_real_positions():
  # Changing the keys and values after position s leaves the outputs up to s unchanged (bitwise):
  # causal masking holds inside the kernel as it does after the padded end.
  q, k, v = qkv(100, heads=1, batch=1)
  s = 37
  k2, v2 = k.at[:, s + 1:].set(5.0), v.at[:, s + 1:].set(-3.0)
  for impl in ('splash', 'pallas_gpu'):
    with attention_lib.interpret_kernels():
      run = jax.jit(lambda q, k, v: attention_lib.attention(q, k, v, causal=True, impl=impl))
      a, b = np.asarray(run(q, k, v)), np.asarray(run(q, k2, v2))
    np.testing.assert_array_equal(a[:, :s + 1], b[:, :s + 1], err_msg=impl)
    assert not np.allclose(a[:, s + 1:], b[:, s + 1:]), impl


@pytest.mark.parametrize('impl', ['splash', 'pallas_gpu'])
def test_fused_kernels_are_causal_only(impl):
  q, k, v = qkv(16)
  with pytest.raises(NotImplementedError, match='causal'):
    attention_lib.attention(q, k, v, causal=False, impl=impl)


@pytest.mark.parametrize('window', [0, pytest.param(12, marks=pytest.mark.slow)])
def test_splash_in_the_model_under_a_mesh_matches_reference(window):
  """A coupled model (fast T=32 and slow N=4 paths) with rows and heads split over 8 devices:
  splash runs per device inside shard_map; logits and parameter gradients match reference (the
  chunked local attention with a window, splash's local mask under the mesh)."""
  tokens = jax.random.randint(jax.random.key(0), (4, 33), 0, 64, dtype=jnp.int32)

  def grads_and_logits(impl: str):
    cfg = ModelConfig(arm='coupled', vocab_size=64, seq_len=32, d_model=32, num_layers=1,
                      num_heads=2, mlp_dim=64, P=8, slow_num_heads=2, phi_dim=64, gate='channel',
                      attention_impl=impl, fast_window=window)
    graphdef, params = nnx.split(models.build(cfg, rngs=3), nnx.Param)
    # Open the gates, so that the slow path reaches the logits.
    params = nnx.map_state(lambda path, p: p + 0.5 if 'gate' in path else p, params)

    def loss(params):
      logits = nnx.merge(graphdef, params)(tokens[:, :-1])
      target = jax.nn.one_hot(tokens[:, 1:], 64)
      return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * target, -1)), logits

    step = jax.value_and_grad(loss, has_aux=True)
    return step, params

  step, params = grads_and_logits('reference')
  (_, want), want_grads = jax.jit(step)(params)
  step, params = grads_and_logits('splash')
  mesh = sharding.make_mesh(dict(data=4, fsdp=1, tensor=2))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(SHARDING_RULES), \
      attention_lib.interpret_kernels():
    assert str(jax.make_jaxpr(step)(params)).count('shard_map') >= 2  # Fast and slow path.
    (_, got), grads = jax.jit(step)(params)
  np.testing.assert_allclose(got, want, **FWD_TOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **GRAD_TOL), grads, want_grads)


# --------------------------------------------------------------------------- local window


def band_reference(q, k, v, window: int):
  """The definition: attention where query t sees keys t-W < s <= t (every s <= t for W = 0),
  one masked product."""
  t = jnp.arange(q.shape[1])
  mask = (t[:, None] >= t[None]) & ((t[:, None] - t[None] < window) if window else True)
  return attention_lib.masked_attention(q, k, v, mask)


def assert_window_matches_band(impl: str, length: int, window: int, kv_heads: int = 2):
  q, (k, v) = qkv(length)[0], qkv(length, heads=kv_heads, seed=1)[1:]
  weights = jax.random.normal(jax.random.key(7), q.shape)
  run = lambda attend: jax.jit(jax.value_and_grad(
      lambda q, k, v: jnp.sum(attend(q, k, v) * weights), argnums=(0, 1, 2)))(q, k, v)
  with attention_lib.interpret_kernels():
    got = run(lambda q, k, v: attention_lib.attention(q, k, v, causal=True, impl=impl,
                                                     window=window))
  want = run(lambda q, k, v: band_reference(q, k, v, window))
  tol = (FWD_TOL, GRAD_TOL) if impl == 'splash' else (dict(atol=1e-5, rtol=1e-5),) * 2
  np.testing.assert_allclose(got[0], want[0], **tol[0])
  for name, a, b in zip('qkv', got[1], want[1]):
    np.testing.assert_allclose(a, b, err_msg=f'd{name}', **tol[1])


# 300 positions and a window of 128: three chunks (the last padded), 384 for splash's tiles.
@pytest.mark.parametrize('impl,length,window,kv_heads', [
    ('reference', 300, 128, 1), ('xla', 37, 8, 2), ('splash', 300, 128, 2),
    *(pytest.param(*case, marks=pytest.mark.slow) for case in (
        ('reference', 16, 1, 2), ('reference', 5, 3, 2), ('xla', 300, 128, 1),
        ('splash', 1000, 200, 1), ('splash', 256, 128, 2), ('splash', 130, 16, 2)))])
def test_windowed_kernels_match_the_band_masked_reference(impl, length, window, kv_heads):
  """Value and gradients of every backend that runs here, against the window's definition."""
  assert_window_matches_band(impl, length, window, kv_heads)


def test_splash_skips_the_blocks_outside_the_window():
  """The local mask leaves each query tile at most ceil(W / tile) + 1 key tiles to visit; the
  causal mask visits every earlier one."""
  local, causal = (attention_lib._splash_kernel(1, 2048, 128, 128, True, w) for w in (256, 0))
  visited = lambda kernel: int(np.count_nonzero(np.asarray(kernel.fwd_mask_info.block_mask)))
  assert visited(local) <= 16 * 3 < visited(causal) == 16 * 17 // 2


def test_a_backend_without_a_window_refuses_one_in_one_line():
  msg = config_error(attention_impl='pallas_gpu', fast_window=64)
  assert "model.attention_impl='pallas_gpu' has no local window" in msg and 'splash' in msg
  ModelConfig(vocab_size=64, seq_len=32, d_model=32, num_heads=2, slow_num_heads=2, P=4,
              attention_impl='splash', fast_window=64)


# --------------------------------------------------------------------------- tiles


@pytest.mark.parametrize('impl,block,length,want', [
    ('splash', 0, 1, (128, 128)), ('splash', 0, 128, (128, 128)), ('splash', 0, 130, (256, 256)),
    ('splash', 0, 2048, (2048, 512)), ('splash', 512, 640, (640, 128)),
    ('splash', 1024, 4096, (4096, 1024)), ('pallas_gpu', 0, 3, (16, 16)),
    ('pallas_gpu', 0, 1024, (1024, 64)), ('pallas_gpu', 128, 48, (48, 16)),
])
def test_tile_rule(impl, block, length, want):
  padded, t = attention_backends.tile(impl, block, length)
  assert (padded, t) == want
  assert padded % t == 0 and padded - length < attention_backends.ATTENTION_BACKENDS[impl].min_block


# --------------------------------------------------------------------------- config and platform


def config_error(**overrides) -> str:
  base = dict(vocab_size=64, seq_len=32, d_model=32, num_heads=2, slow_num_heads=2, P=4)
  with pytest.raises(ValueError) as e:
    ModelConfig(**{**base, **overrides})
  msg = str(e.value)
  assert '\n' not in msg
  return msg


def test_backend_names_have_one_owner():
  assert list(models.ATTENTION_BACKENDS) == list(attention_backends.ATTENTION_BACKENDS)
  for spec in attention_backends.ATTENTION_BACKENDS.values():
    assert callable(getattr(attention_lib, spec.kernel))
  msg = config_error(attention_impl='flash')
  for name in attention_backends.ATTENTION_BACKENDS:
    assert name in msg


def test_backend_table_imports_no_jax_and_config_loads_no_kernel():
  code = '''
import importlib.util, sys
class NoJax:
  def find_spec(self, name, *args):
    if name.split('.')[0] in ('jax', 'flax'):
      raise ImportError(name)
sys.meta_path.insert(0, NoJax())
spec = importlib.util.spec_from_file_location('table', 'fastslow_jax/models/attention_backends.py')
sys.modules['table'] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sys.modules['table'])
sys.meta_path.pop(0)
from fastslow_jax import models
models.ModelConfig(attention_impl='splash', dtype='bfloat16')
print(sorted(m for m in sys.modules if 'pallas.ops' in m))
'''
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == '[]'  # Kernels load when first traced, not with the config.


@pytest.mark.parametrize('dtype', ['float32'])
def test_cudnn_needs_16_bit_compute(dtype):
  msg = config_error(attention_impl='cudnn', dtype=dtype)
  assert "model.attention_impl='cudnn'" in msg and 'bfloat16' in msg and 'float32' in msg
  ModelConfig(vocab_size=64, seq_len=32, d_model=32, num_heads=2, slow_num_heads=2, P=4,
              attention_impl='cudnn', dtype='bfloat16')


@pytest.mark.parametrize('impl,field,block', [
    ('splash', 'attention_block_q', 64), ('splash', 'attention_block_kv', 384),
    ('pallas_gpu', 'attention_block_q', 8), ('pallas_gpu', 'attention_block_kv', 24),
    ('reference', 'attention_block_q', 3),
])
def test_bad_tile_sizes(impl, field, block):
  msg = config_error(attention_impl=impl, **{field: block})
  assert f'model.{field}={block}' in msg and 'power of two' in msg


def devices(platform: str, n: int = 2):
  return [types.SimpleNamespace(platform=platform) for _ in range(n)]


@pytest.mark.parametrize('impl,platform', [('splash', 'cpu'), ('splash', 'gpu'),
                                           ('cudnn', 'tpu'), ('cudnn', 'cpu'),
                                           ('pallas_gpu', 'tpu')])
def test_impossible_platforms_are_one_line_errors(impl, platform):
  with pytest.raises(ValueError) as e:
    models.check_attention_platform(impl, devices(platform))
  msg = str(e.value)
  assert '\n' not in msg and f"model.attention_impl='{impl}'" in msg and platform in msg
  assert 'reference' in msg and 'xla' in msg  # The way out: backends that do run there.


@pytest.mark.parametrize('impl,platform', [('splash', 'tpu'), ('cudnn', 'gpu'),
                                           ('pallas_gpu', 'gpu'), ('reference', 'tpu'),
                                           ('xla', 'cpu')])
def test_possible_platforms_pass(impl, platform):
  models.check_attention_platform(impl, devices(platform))


def test_platform_check_reads_real_devices():
  models.check_attention_platform('reference', jax.devices())
  with pytest.raises(ValueError, match='runs on tpu only, not on cpu'):
    models.check_attention_platform('splash', jax.devices())


# --------------------------------------------------------------------------- ahead of time

# Compiles the real train step (forward and backward) of the tiny coupled model for compile-only
# devices and lists the fused kernels in it: "<kernel> <first result shape> <count>" per line.
# Fast path: 4 heads over T=128 tokens; slow path: 2 heads over N=8 pooled blocks (padded to the
# kernel's minimum tile). 16 sequences over 4 devices: 4 per device.
_LIST_KERNELS = r'''
import collections, re, sys
from fastslow_jax import models, runtime
from fastslow_jax.configs import fastslow
from launch import aot_compile
kind, shape, impl, dtype, window = sys.argv[1:]
devices = aot_compile.target_devices(kind, shape, 1)
if devices is None:
  raise SystemExit('skipped: no compiler for ' + kind)
config = fastslow.get_config('arm=coupled,size=tiny')
config.unlock()
config.model.update(attention_impl=impl, dtype=dtype, slow_num_heads=2, fast_window=int(window))
config = runtime.resolve_config(config, num_devices=len(devices))
setup = runtime.TrainSetup(config, devices)
models.check_attention_platform(impl, devices)
found = collections.Counter()
kernel = re.compile(r'splash_mha_(?:fwd|dq|dkv)|cudnn\$fmha\w+|mha_forward|mha_backward')
for line in setup.compile_train_step(config.batch_size).as_text().splitlines():
  line = re.sub(r'ir = "(?:[^"\\]|\\.)*"', '', line)  # A Triton kernel's binary IR.
  name, result = kernel.search(line), re.search(r'= \(?[a-z0-9]+\[([0-9,]+)\]', line)
  if 'custom-call(' in line and name and result:
    found[name.group(0), result.group(1)] += 1
for (name, result), n in sorted(found.items()):
  print(name, result, n)
'''


def compiled_kernels(kind: str, shape: str, impl: str, dtype: str, window: int = 0) -> list[str]:
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  result = subprocess.run([sys.executable, '-c', _LIST_KERNELS, kind, shape, impl, dtype,
                           str(window)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  if 'skipped: no compiler' in result.stderr:
    pytest.skip(f'no {kind} compiler here (pip install -e .[test] for TPU, .[aot-gpu] for GPU)')
  if 'cuDNN not found' in result.stderr:
    pytest.skip('the cuDNN libraries are not installed (pip install -e .[aot-gpu])')
  assert result.returncode == 0, result.stderr[-3000:]
  return sorted(result.stdout.splitlines())


def expected(kernels, shapes) -> list[str]:
  return sorted(f'{k} {s} 2' for k in kernels for s in shapes)  # 2 layers.


@pytest.mark.slow
@pytest.mark.parametrize('window', [0, 32])  # 32: the fast path's local mask.
def test_splash_compiles_for_tpu_fast_and_slow_path_with_backward(window):
  # Splash takes [B, H, T, D]; the slow path's N=8 is padded to one 128-tile.
  assert compiled_kernels('v5e', '2x2', 'splash', 'float32', window) == expected(
      ('splash_mha_fwd', 'splash_mha_dq', 'splash_mha_dkv'), ('4,4,128,16', '4,2,128,32'))


@pytest.mark.slow
@pytest.mark.parametrize('window', [0, 32])  # 32: the fast path's sliding window.
def test_cudnn_compiles_for_gpu_fast_and_slow_path_with_backward(window):
  # cuDNN returns [B, H, T, D] and needs no padding.
  assert compiled_kernels('h100', '1x4', 'cudnn', 'bfloat16', window) == expected(
      ('cudnn$fmhaSoftmax', 'cudnn$fmhaSoftmaxBackward'), ('4,4,128,16', '4,2,8,32'))


@pytest.mark.slow
def test_pallas_gpu_compiles_for_gpu_fast_and_slow_path_with_backward():
  # The Triton kernel keeps [B, T, H, D]; the slow path's N=8 is padded to one 16-tile.
  assert compiled_kernels('h100', '1x4', 'pallas_gpu', 'bfloat16') == expected(
      ('mha_forward', 'mha_backward'), ('4,128,4,16', '4,16,2,32'))


@pytest.mark.parametrize('topology,want', [
    ('h100:8', ('h100', '1x8')), ('a100:2x8', ('a100', '2x8')), ('h200:1', ('h200', '1x1')),
    ('b200:4x8', ('b200', '4x8'))])
def test_gpu_topology_names(topology, want):
  from launch import aot_compile
  assert aot_compile.parse_topology(topology) == want


@pytest.mark.parametrize('topology', ['h100:0', 'h100:x8', 'h100:2x', 'rtx9090:8', 'h100:2x2x2'])
def test_bad_gpu_topology_names(topology):
  from launch import aot_compile
  with pytest.raises(ValueError, match='h100:8') as e:
    aot_compile.parse_topology(topology)
  assert all(model in str(e.value) for model in aot_compile.gpu_models())


def aot_compile(topology: str, impl: str) -> subprocess.CompletedProcess:
  """`launch.aot_compile` of the tiny config with attention `impl`, in its own process."""
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  return subprocess.run([sys.executable, '-m', 'launch.aot_compile', f'--topology={topology}',
                         '--config=configs/fastslow.py:size=tiny',
                         f'--config.model.attention_impl={impl}'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_gpu_compile_without_the_cuda_plugin_is_one_skip_line():
  result = aot_compile('h100:4', 'pallas_gpu')
  assert result.returncode == 0, result.stderr[-2000:]
  if result.stdout.startswith('skipped:'):
    assert len(result.stdout.splitlines()) == 1 and 'CUDA plugin' in result.stdout
  else:
    assert '4 x NVIDIA H100 80GB HBM3 (h100:1x4)' in result.stdout, result.stdout


def test_aot_compile_refuses_a_kernel_the_target_cannot_run():
  result = aot_compile('cpu:4', 'splash')
  assert result.returncode == 2 and result.stderr.startswith('error: ')
  assert len(result.stderr.strip().splitlines()) == 1 and 'runs on tpu only' in result.stderr


def test_kernel_choice_and_tiles_keep_a_workdir_resumable(tmp_path):
  # Checkpoints written before the tile fields existed, or with another backend, still resume.
  from fastslow_jax import data, train
  from fastslow_jax.configs import fastslow
  from fastslow_jax.rundir import RunDir
  run, config = RunDir(tmp_path), fastslow.get_config('size=tiny')
  old = config.to_dict()
  for field in ('attention_block_q', 'attention_block_kv'):
    del old['model'][field]
  run.config.write_text(json.dumps(old))
  (run.checkpoints / '100').mkdir(parents=True)
  config.unlock()
  config.model.update(attention_impl='splash', attention_block_q=256, attention_block_kv=1024)
  source = data.source(config.data)
  train.check_workdir(run, config, source, overwrite=False)
  config.model.num_heads = 2  # What is computed changes: refused.
  with pytest.raises(ValueError, match='different model'):
    train.check_workdir(run, config, source, overwrite=False)


def test_config_tiles_reach_both_paths(monkeypatch):
  calls = []
  tiles = attention_lib._tiles
  monkeypatch.setattr(attention_lib, '_tiles', lambda *a: calls.append(a) or tiles(*a))
  cfg = ModelConfig(arm='coupled', vocab_size=64, seq_len=256, d_model=32, num_layers=1,
                    num_heads=2, mlp_dim=64, P=8, slow_num_heads=2, phi_dim=64,
                    attention_impl='splash', attention_block_q=256, attention_block_kv=128)
  model = models.build(cfg, rngs=0)
  with attention_lib.interpret_kernels():
    jax.make_jaxpr(model)(jnp.zeros((1, 256), jnp.int32))
  assert sorted(calls) == [('splash', 32, 256, 128), ('splash', 256, 256, 128)]  # Slow, fast.
