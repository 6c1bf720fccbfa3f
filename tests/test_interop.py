"""Hugging Face Llama checkpoints in and out, and retrofitting a pretrained dense model.

Without torch: safetensors files, the config mapping and its refusals, import then export
bitwise, and a retrofit whose first training loss is the pretrained model's. With transformers
and torch (`-m hf`; `pip install -e '.[hf]'`): logits against transformers' own Llama (built here
from a LlamaConfig, nothing downloaded), export loaded by transformers, greedy generation.
"""

import json
import logging
import os
import pathlib
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from conftest import ROOT, once_per_session, subprocess_env, tiny_config
from fastslow_jax import cli, configlib, convert, data, metrics, models, restoring, runtime, train
from fastslow_jax.errors import UsageError
from fastslow_jax.interop import llama, retrofit, safetensors_io, sources

# The suite's tiny model (conftest.tiny_config) as a Llama: retrofits compile its programs.
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10_000.0,
            tie_word_embeddings=True)


def write_llama(path, *, shards: int = 1, seed: int = 0, dtype=np.float32, **overrides):
  """A random Llama directory written without torch (config.json and safetensors)."""
  hf = {**TINY, **overrides}
  cfg = models.ModelConfig(arm='dense', **llama.model_fields(
      {'model_type': 'llama', **hf}, where='test'))
  rng = np.random.default_rng(seed)
  tensors = {t.hf: (rng.normal(size=t.shape) * 0.15 + ('norm' in t.hf)).astype(dtype)
             for t in llama.tensors(cfg)}
  total = sum(a.nbytes for a in tensors.values())
  os.makedirs(path, exist_ok=True)
  safetensors_io.write(str(path), [safetensors_io.Spec(n, a.shape, a.dtype)
                                   for n, a in tensors.items()],
                       tensors.__getitem__, max_shard_bytes=-(-total // shards))
  config = llama.hf_config(cfg, dtype=np.dtype(dtype).name)
  (pathlib.Path(path) / 'config.json').write_text(json.dumps(config))
  return path


@pytest.fixture(scope='session')
def llama_dir(shared_dir):
  return once_per_session(shared_dir, 'llama_dir', lambda path: write_llama(path, shards=3))


@pytest.fixture(scope='session')
def imported_run(shared_dir, llama_dir):
  """`llama_dir` imported as a dense run at step 0, its layers scanned."""
  return once_per_session(shared_dir, 'imported_run', lambda path: convert.import_hf(
      str(llama_dir), str(path / 'run'), tiny_config(
          arm='dense', **{'mesh.data': 1, 'model.scan_layers': True}),
      devices=jax.devices()[:1])) / 'run'


# --------------------------------------------------------------------------- without torch


def test_safetensors_files_round_trip_one_tensor_at_a_time(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {'a': rng.normal(size=(3, 5)).astype(np.float32), 'b': np.float16(2.5).reshape(()),
            'c': rng.normal(size=(7,)).astype(ml_dtypes.bfloat16), 'd': np.zeros((0, 4), np.int32),
            'e': rng.integers(0, 9, (4, 4)).astype(np.int64)}
  specs = [safetensors_io.Spec(n, a.shape, a.dtype) for n, a in arrays.items()]
  produced = []
  files = safetensors_io.write(str(tmp_path), specs, lambda n: produced.append(n) or arrays[n],
                               max_shard_bytes=64)
  assert produced == list(arrays)  # Each computed once, when its bytes were due.
  assert files[-1] == safetensors_io.INDEX_FILE and len(files) > 2
  reader = safetensors_io.Reader(str(tmp_path))
  for name, array in arrays.items():
    got = reader.read(name)
    assert got.dtype == array.dtype and got.shape == array.shape
    assert got.tobytes() == array.tobytes()
  shard = tmp_path / files[0]
  shard.write_bytes(shard.read_bytes()[:-3])
  with pytest.raises(UsageError, match='does not fit its shape or the file'):
    safetensors_io.Reader(str(tmp_path))


@pytest.mark.parametrize('change, message', [
    ({'model_type': 'mistral'}, "is a 'mistral' model"),
    ({'architectures': ['LlamaForSequenceClassification']}, 'only LlamaForCausalLM'),
    ({'rope_scaling': {'rope_type': 'llama3', 'factor': 8.0}}, r'rope scaling \(rope_scaling='),
    ({'rope_parameters': {'rope_type': 'yarn', 'rope_theta': 1e4}}, 'rope scaling'),
    ({'attention_bias': True}, 'attention biases'),
    ({'mlp_bias': True}, 'MLP biases'),
    ({'sliding_window': 4096}, 'sliding-window attention'),
    ({'hidden_act': 'gelu'}, 'an activation other than silu'),
    ({'head_dim': 64}, 'head_dim = hidden_size / num_attention_heads'),
])
def test_what_the_zoo_does_not_implement_is_refused_in_one_line(change, message):
  config = {'model_type': 'llama', 'architectures': ['LlamaForCausalLM'], **TINY, **change}
  with pytest.raises(UsageError, match=message) as e:
    llama.model_fields(config, where='DIR')
  assert '\n' not in str(e.value)


def test_config_fields_round_trip():
  cfg = models.ModelConfig(arm='dense', vocab_size=96, d_model=64, num_heads=4, num_kv_heads=2,
                           mlp_dim=80, rope_theta=5e5, norm_eps=1e-5, tie_embeddings=False)
  fields = llama.model_fields(llama.hf_config(cfg, dtype='float32'), where='x')
  assert fields == {k: getattr(cfg, k) for k in llama.FIELDS}
  with pytest.raises(UsageError, match=r'model.fast_window=16 \(a local fast path\) has no '):
    llama.hf_config(models.ModelConfig(arm='dense', fast_window=16), dtype='float32')


def test_extra_or_missing_tensors_are_refused(tmp_path):
  path = write_llama(tmp_path / 'llama', shards=3)
  bias = safetensors_io.Spec('model.layers.0.self_attn.q_proj.bias', (32,), np.float32)
  safetensors_io.write(str(tmp_path), [bias], lambda n: np.zeros(32, np.float32))
  (tmp_path / 'model.safetensors').rename(path / 'extra.safetensors')
  (path / 'model.safetensors.index.json').unlink()
  with pytest.raises(UsageError, match="tensors a plain Llama has not .*q_proj.bias"):
    sources.open_source(str(path))  # Without an index, every .safetensors file counts.
  (path / 'extra.safetensors').unlink()
  sorted(path.glob('model-*.safetensors'))[1].unlink()
  with pytest.raises(UsageError, match="lacks tensor 'model.layers"):
    sources.open_source(str(path))


def test_import_then_export_is_bitwise(imported_run, llama_dir, tmp_path):
  out = tmp_path / 'hf'
  files = convert.export_hf(str(imported_run), str(out))
  assert 'model.safetensors' in files  # The tiny model fits one file.
  ours, theirs = safetensors_io.Reader(str(llama_dir)), safetensors_io.Reader(str(out))
  assert ours.names() == theirs.names()
  for name in ours.names():
    assert ours.read(name).tobytes() == theirs.read(name).tobytes(), name
  exported = json.loads((out / 'config.json').read_text())
  original = json.loads((llama_dir / 'config.json').read_text())
  assert llama.model_fields(exported, 'out') == llama.model_fields(original, 'in')


def test_export_refuses_other_arms_and_a_used_directory(one_device_run, imported_run, tmp_path):
  with pytest.raises(UsageError, match=r'fastslow coupled run, which has no Hugging Face '
                     r'architecture: only dense runs \(model.arm=dense\) convert'):
    convert.export_hf(str(one_device_run), str(tmp_path / 'out'))
  (tmp_path / 'used').mkdir()
  (tmp_path / 'used' / 'x').write_text('')
  with pytest.raises(UsageError, match='is not empty'):
    convert.export_hf(str(imported_run), str(tmp_path / 'used'))
  with pytest.raises(UsageError, match=r'no checkpoint at step 7 \(have \[0\]\)'):
    convert.export_hf(str(imported_run), str(tmp_path / 'out'), step=7)


def first_batch(config, devices=1):
  """The first global batch a one-process run of `config` on `devices` trains on."""
  config = runtime.resolve_config(config, devices)
  windows = data.source(config.data).open('train', seq_len=config.model.seq_len)
  iterator = data.make_iterator(windows, batch_size=config.batch_size, seed=config.seed,
                                shuffle=config.data.shuffle)
  return next(iterator)


def pretrained_loss(spec, batch) -> float:
  model = retrofit.load_model(str(spec), seq_len=batch.shape[1] - 1)
  graphdef, params = nnx.split(model, nnx.Param)
  return float(jax.jit(runtime.loss_fn, static_argnums=0)(graphdef, params, batch))


def retrofit_first_loss(tmp_path, spec, devices=1, **overrides):
  """(the first step's loss of a run retrofitted from `spec` on `devices`, the pretrained model's
  loss on the same batch), through `train.train`."""
  config = tiny_config(**{'init_from': str(spec), 'mesh.data': devices, **overrides})
  train.train(config, tmp_path / 'run', devices=jax.devices()[:devices], stop_at_step=1)
  first = metrics.read_jsonl(tmp_path / 'run' / 'metrics.jsonl')[0]
  assert first['step'] == 1 and set(first['gate'].values()) == {0.0}
  dense = pretrained_loss(spec, first_batch(config, devices))
  print(f'first loss {first["loss"]:.8f}, pretrained model on the same batch {dense:.8f}')
  return first['loss'], dense


def test_retrofit_starts_at_the_pretrained_loss(tmp_path, llama_dir, one_device_run):
  loss, dense = retrofit_first_loss(tmp_path, llama_dir)  # fastslow coupled, from the HF files.
  assert loss == pytest.approx(dense, rel=1e-6, abs=1e-6)
  fresh = metrics.read_jsonl(one_device_run / 'metrics.jsonl')[0]['loss']  # Same run, no init_from.
  assert abs(loss - fresh) > 0.1
  resumed = tiny_config(**{'init_from': str(tmp_path / 'gone'), 'mesh.data': 1})
  train.train(resumed, tmp_path / 'run', devices=jax.devices()[:1], stop_at_step=2)  # Ignored.
  assert [r['step'] for r in metrics.read_jsonl(tmp_path / 'run' / 'metrics.jsonl')] == [1, 2]


@pytest.mark.slow
def test_retrofit_on_a_sharded_mesh(tmp_path, llama_dir, sharded_run):
  """Loaded parameters take the fresh ones' shardings (data x fsdp x tensor = 2 x 2 x 2)."""
  loss, dense = retrofit_first_loss(tmp_path, llama_dir, devices=8,
                                    **{'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2})
  assert loss == pytest.approx(dense, rel=1e-6, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('family', ['compressed', 'fastslow'])
def test_retrofit_from_a_dense_run_starts_at_its_loss(tmp_path, imported_run, family):
  loss, dense = retrofit_first_loss(tmp_path, imported_run, **{'model.family': family})
  assert loss == pytest.approx(dense, rel=1e-6, abs=1e-6)


def test_retrofit_fills_the_hourglass_stages_in_order_and_says_it_differs(tmp_path, caplog):
  spec = write_llama(tmp_path / 'llama', num_hidden_layers=3)
  config = configlib.load(f'fastslow:family=hourglass,arm=coupled,P=4,init_from={spec}')
  config.model.hourglass_pool = 'linear'  # A parameter of its own, kept fresh.
  cfg = models.ModelConfig.from_mapping(config.model)
  assert cfg.hourglass_stages == (1, 1, 1)
  fresh = nnx.state(models.build(cfg), nnx.Param)
  with caplog.at_level(logging.INFO):
    params = retrofit.load_shared(cfg, fresh, retrofit.check(config))
  assert 'has no gate' in caplog.text and 'fresh: 1 SlowParam' in caplog.text
  reader = safetensors_io.Reader(str(spec))
  for layer, stage in enumerate((params['pre'], params['slow']['inner'], params['post'])):
    q = reader.read(f'model.layers.{layer}.self_attn.q_proj.weight')
    np.testing.assert_array_equal(stage['blocks'][0]['fast']['wq'][...], q.T.reshape(32, 2, 16))
  np.testing.assert_array_equal(params['slow']['pool'][...], fresh['slow']['pool'][...])
  config.model.hourglass_layers = '1,2,1'
  with pytest.raises(UsageError, match='model.num_layers=3 and this run 4: give '
                     'model.hourglass_layers stages that add up to it'):
    retrofit.check(config)


def test_config_argument_takes_the_architecture_and_mismatches_are_one_line(llama_dir, tmp_path):
  config = configlib.load(f'fastslow:arm=coupled,size=small,init_from={llama_dir}')
  assert (config.init_from, config.model.d_model, config.model.num_layers) == (
      str(llama_dir), 32, 2)
  config.model.mlp_dim = 128
  with pytest.raises(UsageError, match=r'has model.mlp_dim=64 and this run 128: set '
                     r'--config.model.mlp_dim=64'):
    train.train(config, tmp_path / 'run', devices=jax.devices()[:1])
  assert not (tmp_path / 'run').exists()  # Refused before anything was written.


def test_convert_command_line(imported_run, tmp_path):
  assert cli.command(['export'], ('import', 'export')) == 'export'
  with pytest.raises(UsageError, match=r'give one command, import or export \(got none\)'):
    cli.command([], ('import', 'export'))
  done = subprocess.run([sys.executable, '-m', 'fastslow_jax.convert', 'export',
                         f'--workdir={imported_run}', f'--hf_dir={tmp_path / "out"}',
                         '--dtype=bfloat16'], cwd=ROOT, env=subprocess_env(1),
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  reader = safetensors_io.Reader(str(tmp_path / 'out'))
  assert {reader.dtype(n) for n in reader.names()} == {np.dtype(ml_dtypes.bfloat16)}


# --------------------------------------------------------------------------- against transformers


@pytest.fixture(scope='module')
def hf():
  """transformers, with torch (the `hf` extra); the test skips without them."""
  pytest.importorskip('torch')
  return pytest.importorskip('transformers')


def hf_llama(hf, path, *, kv=4, tied=False, shard='1GB', init=0.02, vocab=96):
  """transformers' own random LlamaForCausalLM (float32), saved to `path`."""
  import torch
  config = hf.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv,
                          rms_norm_eps=1e-5, rope_theta=5000.0, tie_word_embeddings=tied,
                          max_position_embeddings=64, initializer_range=init, bos_token_id=None,
                          eos_token_id=None, pad_token_id=None)
  torch.manual_seed(0)
  model = hf.LlamaForCausalLM(config).eval()
  model.save_pretrained(path, max_shard_size=shard)
  return model


def hf_logits(model, tokens) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens, np.int64))).logits.numpy()


def our_logits(model, tokens) -> np.ndarray:
  return np.asarray(jax.jit(lambda m, t: m(t))(model, np.asarray(tokens, np.int32)))


TOKENS = np.random.default_rng(0).integers(0, 96, (2, 24))


@pytest.mark.hf
@pytest.mark.parametrize('kv, tied, shard', [(4, False, '1GB'), (2, True, '20KB'),
                                             (1, False, '20KB')],
                         ids=['mha-untied-one-file', 'gqa-tied-shards', 'mqa-untied-shards'])
def test_imported_logits_equal_transformers(hf, tmp_path, kv, tied, shard):
  reference = hf_llama(hf, tmp_path, kv=kv, tied=tied, shard=shard)
  assert (len(list(tmp_path.glob('*.safetensors'))) > 1) == (shard != '1GB')
  model = retrofit.load_model(str(tmp_path), seq_len=32)
  assert (model.config.kv_heads, model.config.tie_embeddings) == (kv, tied)
  diff = np.abs(our_logits(model, TOKENS) - hf_logits(reference, TOKENS)).max()
  print(f'max |logits - transformers| = {diff:.2e}')
  assert diff < 1e-4


@pytest.mark.hf
def test_exported_run_loads_in_transformers_with_equal_logits(hf, imported_run, tmp_path):
  convert.export_hf(str(imported_run), str(tmp_path))  # A scanned dense run.
  reference = hf.LlamaForCausalLM.from_pretrained(str(tmp_path)).eval()
  model = restoring.restore(imported_run, devices=jax.devices()[:1], scan_layers=False).model()
  tokens = TOKENS % 64
  diff = np.abs(our_logits(model, tokens) - hf_logits(reference, tokens)).max()
  print(f'max |logits - transformers| = {diff:.2e}')
  assert diff < 1e-4


@pytest.mark.hf
def test_greedy_generation_equals_transformers_generate(hf, tmp_path):
  import torch
  from fastslow_jax.generate import generate
  reference = hf_llama(hf, tmp_path, kv=2, init=0.3)  # Peaked predictions: no near-ties.
  model = retrofit.load_model(str(tmp_path), seq_len=64)
  prompt = [5, 17, 3, 88, 41]
  ours = generate(model, [prompt], max_new_tokens=40, temperature=0.0)[0]
  with torch.no_grad():
    theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)
  assert list(ours) == theirs[0, len(prompt):].tolist()


@pytest.mark.slow
@pytest.mark.hf
def test_the_readme_path_for_a_llama_directory(hf, tmp_path):
  """A Llama directory with its tokenizer.json: prepare data with it, retrofit, train, evaluate,
  generate; a dense run from it exports with the tokenizer, and transformers reads both."""
  from fastslow_jax import evaluate
  from fastslow_jax.data import prepare, tokenizers
  rng = np.random.default_rng(0)
  words = ['the', 'slow', 'fast', 'path', 'gate', 'block', 'token', 'model', 'of', 'and']
  text = '\n\n'.join(' '.join(rng.choice(words, 40)) for _ in range(400))
  (tmp_path / 'corpus.txt').write_text(text)
  llama_dir = tmp_path / 'llama'
  blob = tokenizers.train_bpe([text], 300)
  hf_llama(hf, llama_dir, kv=2, vocab=300)
  (llama_dir / 'tokenizer.json').write_bytes(blob)
  prepare.prepare(str(tmp_path / 'data'), f'hf:{llama_dir}/tokenizer.json',
                  input=str(tmp_path / 'corpus.txt'), documents_mode='paragraph', num_workers=1)
  common = {'data.kind': 'tokens', 'data.path': str(tmp_path / 'data'), 'model.seq_len': 32,
            'batch_size': 8, 'total_steps': 2, 'log_every': 1, 'eval_every': 2,
            'eval_batches': 1, 'checkpoint_every': 2, 'mesh.data': 1}
  config = configlib.load(f'fastslow:arm=coupled,P=8,init_from={llama_dir}', common)
  train.train(config, tmp_path / 'coupled', devices=jax.devices()[:1])
  first = metrics.read_jsonl(tmp_path / 'coupled' / 'metrics.jsonl')[0]
  assert first['loss'] == pytest.approx(pretrained_loss(llama_dir, first_batch(config)), rel=1e-6)
  assert evaluate.evaluate(str(tmp_path / 'coupled'), devices=jax.devices()[:1])['step'] == 2
  done = subprocess.run([sys.executable, '-m', 'fastslow_jax.generate',
                         f'--workdir={tmp_path / "coupled"}', '--prompt=the slow',
                         '--max_new_tokens=8', '--temperature=0'], cwd=ROOT,
                        env=subprocess_env(1), capture_output=True, text=True)
  assert done.returncode == 0 and done.stdout.strip(), done.stderr

  config = configlib.load(f'fastslow:arm=dense,init_from={llama_dir}', common)
  train.train(config, tmp_path / 'dense', devices=jax.devices()[:1])
  out = tmp_path / 'exported'
  assert 'tokenizer.json' in convert.export_hf(str(tmp_path / 'dense'), str(out), step=2)
  tokenizer = hf.PreTrainedTokenizerFast.from_pretrained(str(out))
  ours = tokenizers.from_spec(f'hf:{llama_dir}/tokenizer.json')
  assert tokenizer.encode('the slow gate') == ours.encode('the slow gate').tolist()
  assert tokenizer.eos_token_id == ours.eod_id == 0
  reference = hf.LlamaForCausalLM.from_pretrained(str(out)).eval()
  model = restoring.restore(tmp_path / 'dense', devices=jax.devices()[:1]).model()
  tokens = TOKENS * 3
  assert np.abs(our_logits(model, tokens) - hf_logits(reference, tokens)).max() < 1e-4
