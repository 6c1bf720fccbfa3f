"""Tokenizers, `prepare` and the `tokens` source: round trips, splits, resuming, errors."""

import gzip
import json
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fastslow_jax import data
from fastslow_jax.configs import schema
from fastslow_jax.data import documents, prepare, text, tokenizers, tokens

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = ('fast slow block pool gate token window shard slice über café naïve 漢字 '
         'attention the a of and to in').split()
SAMPLE = ('Fast and slow: é, ü, 漢字, emoji 🙂\n\n\tindented  double  spaces\r\n'
          'literal <|endoftext|> and </s> stay text.')


def make_documents(n, seed=0, lines=(1, 4)):
  """n paragraphs of random words (no blank lines inside, no surrounding whitespace)."""
  rng = np.random.default_rng(seed)
  return ['\n'.join(' '.join(rng.choice(WORDS, rng.integers(3, 15)))
                    for _ in range(rng.integers(*lines))) for _ in range(n)]


def write_paragraphs(path, docs):
  path.write_text('\n\n'.join(docs) + '\n', encoding='utf-8')
  return path


def tokens_config(path):
  cfg = schema.defaults().data
  cfg.update({'kind': 'tokens', 'path': str(path)})
  return cfg


def split_documents(tok, stream):
  """The documents of a token stream: decoded text between end-of-document ids."""
  stream = np.asarray(stream, np.int64)
  assert stream[-1] == tok.eod_id
  cuts = np.flatnonzero(stream == tok.eod_id)
  return [tok.decode(d) for d in np.split(stream, cuts + 1)[:-1] for d in [d[:-1]]]


def all_tokens(path, split):
  stream, _ = tokens.open_split(str(path), split)
  return stream[:]


# ----------------------------------------------------------------------------------- tokenizers


@pytest.fixture(scope='module')
def model_files(tmp_path_factory):
  """A user's GPT-2-style tokenizer.json (with and without an end-of-text token) and a
  SentencePiece model, trained here on local text (nothing is downloaded)."""
  hf = pytest.importorskip('tokenizers')
  spm = pytest.importorskip('sentencepiece')
  root = tmp_path_factory.mktemp('models')
  texts = make_documents(300, seed=1) + [SAMPLE]
  files = {}
  for name, special in (('gpt2', ['<|endoftext|>']), ('noeos', [])):
    tok = hf.implementations.ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=400, special_tokens=special, show_progress=False)
    files[name] = root / f'{name}.json'
    tok.save(str(files[name]))
  (root / 'sp.txt').write_text('\n'.join(texts))
  spm.SentencePieceTrainer.train(
      input=str(root / 'sp.txt'), model_prefix=str(root / 'sp'), vocab_size=300,
      model_type='bpe', byte_fallback=True, normalization_rule_name='identity',
      remove_extra_whitespaces=False, add_dummy_prefix=False, minloglevel=2, num_threads=1)
  files['sp'] = root / 'sp.model'
  return files


@pytest.fixture(scope='module')
def every_tokenizer(model_files):
  bpe_blob = tokenizers.train_bpe(make_documents(300, seed=1), 300)
  return {
      'byte': tokenizers.from_spec('byte'),
      'bpe': tokenizers.from_blob('bpe', bpe_blob, 'bpe:300'),
      'hf': tokenizers.from_spec(f'hf:{model_files["gpt2"]}'),
      'hf-no-eos': tokenizers.from_spec(f'hf:{model_files["noeos"]}'),
      'sentencepiece': tokenizers.from_spec(f'sentencepiece:{model_files["sp"]}'),
  }


@pytest.mark.parametrize('name', ['byte', 'bpe', 'hf', 'hf-no-eos', 'sentencepiece'])
def test_text_tokens_text_round_trip(every_tokenizer, name):
  tok = every_tokenizer[name]
  ids = tok.encode(SAMPLE)
  assert tok.decode(ids) == SAMPLE
  # Text spelling a special token stays text: the only end of document is the one appended.
  assert 0 <= ids.min() and ids.max() < tok.vocab_size and tok.eod_id not in ids
  assert 0 <= tok.eod_id < tok.vocab_size
  docs = [SAMPLE, 'second document', 'third']
  stream = tok.encode_documents(docs)
  assert stream.dtype == tokenizers.token_dtype(tok.vocab_size) == np.uint16
  assert split_documents(tok, stream) == docs
  assert tok.decode(stream) == ''.join(d + tok.eod_text for d in docs)
  again = tokenizers.from_blob(tok.kind, tok.blob, tok.spec)  # As reloaded from a dataset.
  assert again.fingerprint == tok.fingerprint and again.eod_id == tok.eod_id
  np.testing.assert_array_equal(again.encode(SAMPLE), ids)
  assert tok.bytes_per_token(docs) == pytest.approx(
      sum(len(d.encode()) for d in docs) / len(stream))


def test_end_of_document_ids_and_fingerprints(every_tokenizer, model_files):
  toks = every_tokenizer
  assert (toks['bpe'].eod_id, toks['bpe'].eod_text, toks['bpe'].vocab_size) == (
      0, '<|endoftext|>', 300)
  import tokenizers as hf
  size = {n: hf.Tokenizer.from_file(str(model_files[n])).get_vocab_size()
          for n in ('gpt2', 'noeos')}
  assert toks['hf'].eod_text == '<|endoftext|>' and toks['hf'].vocab_size == size['gpt2']
  # No end-of-text token: one id appended after the vocabulary.
  assert (toks['hf-no-eos'].eod_id, toks['hf-no-eos'].vocab_size) == (size['noeos'],
                                                                      size['noeos'] + 1)
  assert toks['sentencepiece'].eod_text == '</s>'
  assert len({t.fingerprint for t in toks.values()}) == len(toks)
  # The byte tokenizer's id is pinned: runs recorded with it must keep matching.
  assert tokenizers.BYTE.fingerprint == 'byte-60418b7945bd21d3'
  changed = json.loads(model_files['gpt2'].read_text())
  changed['model']['merges'] = changed['model']['merges'][:-1]
  assert tokenizers.from_blob('hf', json.dumps(changed).encode(), 'x').fingerprint != (
      toks['hf'].fingerprint)


def test_byte_tokenizer_keeps_the_text_sources_ids():
  docs = ['héllo', b'raw \xff bytes']
  expected = np.concatenate([np.frombuffer('héllo'.encode(), np.uint8), [256],
                             np.frombuffer(b'raw \xff bytes', np.uint8), [256]])
  np.testing.assert_array_equal(text.encode_documents(docs), expected)
  np.testing.assert_array_equal(tokenizers.BYTE.encode_documents(docs), expected)
  assert text.END_OF_DOCUMENT == tokenizers.BYTE.eod_id == 256
  assert text.VOCAB_SIZE == tokenizers.BYTE.vocab_size == 257


def test_bpe_training_is_deterministic():
  docs = make_documents(200, seed=3)
  assert tokenizers.train_bpe(docs, 280) == tokenizers.train_bpe(iter(docs), 280)


@pytest.mark.parametrize('spec,match', [
    ('bytes', 'is unknown'), ('byte:1', 'is unknown'), ('bpe:100', 'at least 258'),
    ('bpe:x', 'at least 258'), ('hf:/no/such/tokenizer.json', 'is not a file'),
    ('sentencepiece:/no/such.model', 'is not a file'),
])
def test_bad_tokenizer_specs(spec, match):
  with pytest.raises(ValueError, match=match) as e:
    tokenizers.parse_spec(spec)
  assert '\n' not in str(e.value)


def test_a_file_that_is_not_a_tokenizer_is_refused(tmp_path):
  (tmp_path / 'bad.json').write_text('{"not": "a tokenizer"}')
  (tmp_path / 'bad.model').write_bytes(b'\x00garbage')
  with pytest.raises(ValueError, match='not a readable tokenizer.json'):
    tokenizers.from_spec(f'hf:{tmp_path}/bad.json')
  with pytest.raises(ValueError, match='not a readable SentencePiece model'):
    tokenizers.from_spec(f'sentencepiece:{tmp_path}/bad.model')


# ------------------------------------------------------------------------------------ documents


def reassemble(pieces):
  docs, current = [], b''
  for piece, ends in pieces:
    current += piece
    if ends:
      docs.append(current.decode())
      current = b''
  return docs


def test_document_modes(tmp_path):
  docs = make_documents(40, seed=4)
  write_paragraphs(tmp_path / 'a.txt', docs[:20])
  # Blank lines holding spaces or tabs, and runs of blank lines, also separate paragraphs.
  (tmp_path / 'b.txt').write_text('\n \t\n\n'.join(docs[20:]) + '\n\n\n')
  paragraphs = documents.TextFiles(f'{tmp_path}/*.txt', 'paragraph', 'text')
  assert paragraphs.count() == 40 and reassemble(paragraphs.pieces()) == docs
  lines = documents.TextFiles(str(tmp_path / 'a.txt'), 'line', 'text')
  expected = [line for d in docs[:20] for line in d.split('\n')]
  assert lines.count() == len(expected) and reassemble(lines.pieces()) == expected
  files = documents.TextFiles(f'{tmp_path}/a.txt,{tmp_path}/b.txt', 'file', 'text')
  assert files.count() == 2
  assert reassemble(files.pieces()) == [(tmp_path / n).read_text() for n in ('a.txt', 'b.txt')]
  records = [{'text': d, 'id': i} for i, d in enumerate(docs)]
  with gzip.open(tmp_path / 'c.jsonl.gz', 'wt') as f:
    f.write('\n'.join(json.dumps(r) for r in records))
  jsonl = documents.TextFiles(str(tmp_path / 'c.jsonl.gz'), 'file', 'text')
  assert jsonl.count() == 40 and reassemble(jsonl.pieces()) == docs


def test_pieces_do_not_depend_on_block_size_and_long_documents_are_cut(tmp_path, monkeypatch):
  rng = np.random.default_rng(5)
  long_doc = ''.join(rng.choice(list('abcé漢 '), 5000)) + '\n' + 'x' * 3000
  docs = make_documents(30, seed=5) + [long_doc] + make_documents(5, seed=6)
  write_paragraphs(tmp_path / 'in.txt', docs)
  monkeypatch.setattr(documents, 'PIECE_BYTES', 1000)
  reference = list(documents.TextFiles(str(tmp_path / 'in.txt'), 'paragraph', 'text').pieces())
  assert max(len(p) for p, _ in reference) <= 1000 and sum(e for _, e in reference) == 36
  assert reassemble(reference) == docs
  for piece, _ in reference:
    piece.decode()  # Cut at character boundaries.
  for block in (7, 100, 999, 4096):
    monkeypatch.setattr(documents, 'BLOCK_BYTES', block)
    assert list(documents.TextFiles(str(tmp_path / 'in.txt'), 'paragraph',
                                    'text').pieces()) == reference


def test_validation_documents_are_evenly_spaced():
  for n, fraction in ((2, 0.05), (20, 0.05), (1000, 0.05), (7, 0.5)):
    chosen = [i for i in range(n) if documents.is_validation(i, n, documents.holdout(n, fraction))]
    assert len(chosen) == max(1, round(n * fraction))
    assert len(chosen) == 1 or np.ptp(np.diff(chosen)) <= 1


# -------------------------------------------------------------------------------------- prepare


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('corpus')
  docs = make_documents(600, seed=7)
  write_paragraphs(root / 'a.txt', docs[:400])
  write_paragraphs(root / 'b.txt', docs[400:])
  return root, docs


@pytest.fixture(scope='module')
def prepared(corpus, tmp_path_factory):
  """bpe:300 over 600 documents in several small shards per split."""
  root, docs = corpus
  out = tmp_path_factory.mktemp('prepared') / 'ds'
  prepare.prepare(str(out), 'bpe:300', input=f'{root}/*.txt', documents_mode='paragraph',
                  val_fraction=0.1, num_workers=0, shard_tokens=2000, task_bytes=2000)
  return out, docs


@pytest.mark.parametrize('spec', ['byte', 'bpe:300'])
def test_prepare_splits_documents_and_round_trips(corpus, tmp_path, spec):
  root, docs = corpus
  out = tmp_path / 'ds'
  manifest = prepare.prepare(str(out), spec, input=f'{root}/*.txt', documents_mode='paragraph',
                             val_fraction=0.1, num_workers=0, task_bytes=3000)
  tok = tokens.tokenizer(str(out))
  assert tok.spec == spec and manifest['tokenizer']['fingerprint'] == tok.fingerprint
  val_index = [i for i in range(600) if documents.is_validation(i, 600, 60)]
  expected = {'validation': [docs[i] for i in val_index],
              'train': [d for i, d in enumerate(docs) if i not in set(val_index)]}
  for split in tokens.SPLITS:
    info = manifest['splits'][split]
    assert split_documents(tok, all_tokens(out, split)) == expected[split]
    assert info['documents'] == len(expected[split])
    assert info['bytes'] == sum(len(d.encode()) for d in expected[split])
    assert info['tokens'] == sum(s['tokens'] for s in info['shards']) == len(
        all_tokens(out, split))
  assert json.loads((out / tokens.DATASET_FILE).read_text()) == manifest
  assert sorted(p.name for p in out.iterdir()) == sorted(
      [tokens.DATASET_FILE] + ([tokenizers.FILE_NAMES['bpe']] if spec != 'byte' else []) +
      [s['file'] for split in tokens.SPLITS for s in manifest['splits'][split]['shards']])
  assert tokens.verify(str(out)) == {s: manifest['splits'][s]['tokens'] for s in tokens.SPLITS}


def test_worker_processes_write_the_same_shards(corpus, tmp_path):
  root, _ = corpus
  kwargs = dict(input=f'{root}/*.txt', documents_mode='paragraph', shard_tokens=5000,
                task_bytes=2000)
  inline = prepare.prepare(str(tmp_path / 'inline'), 'byte', num_workers=0, **kwargs)
  pooled = prepare.prepare(str(tmp_path / 'pooled'), 'byte', num_workers=2, **kwargs)
  assert inline == pooled and len(inline['splits']['train']['shards']) > 3
  for name in os.listdir(tmp_path / 'inline'):
    assert (tmp_path / 'inline' / name).read_bytes() == (tmp_path / 'pooled' / name).read_bytes()


def test_killed_prepare_resumes_to_identical_shards(tmp_path):
  src = tmp_path / 'in.txt'
  src.write_text('\n'.join(d.replace('\n', ' ') for d in make_documents(25_000, seed=8)))
  command = [sys.executable, '-m', 'fastslow_jax.data.prepare', f'--input={src}',
             f'--output={tmp_path / "killed"}', '--num_workers=0', '--documents=line',
             '--tokenizer=byte', '--task_bytes=2000', '--shard_tokens=50000']
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  progress = tmp_path / 'killed' / tokens.PROGRESS_FILE
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if progress.exists() and '"file"' in progress.read_text():  # A shard is finished.
      break
    time.sleep(0.002)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / 'killed' / tokens.DATASET_FILE).exists(), 'finished before the kill'
  with pytest.raises(ValueError, match='did not finish'):
    data.make_dataset(tokens_config(tmp_path / 'killed'), seq_len=8, split='train')
  subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)  # Resumes.
  prepare.prepare(str(tmp_path / 'clean'), 'byte', input=str(src), documents_mode='line',
                  num_workers=0, task_bytes=2000, shard_tokens=50000)
  names = sorted(os.listdir(tmp_path / 'clean'))
  assert sorted(os.listdir(tmp_path / 'killed')) == names and len(names) > 10
  for name in names:
    assert (tmp_path / 'killed' / name).read_bytes() == (tmp_path / 'clean' / name).read_bytes()


def _tree(path):
  return {p: p.stat().st_mtime_ns for p in sorted(path.rglob('*'))} if path.exists() else None


@pytest.mark.parametrize('case,match', [
    ('missing input', 'matches no file'),
    ('empty input', 'holds no documents'),
    ('blank paragraphs', 'holds no documents'),
    ('one document', 'too few to hold out validation'),
    ('tokenizer file missing', 'is not a file'),
    ('bad jsonl', 'record 2 has no string field'),
    ('no input', 'exactly one of --input'),
    ('bad fraction', '--val_fraction=1.0 is invalid'),
    ('another tokenizer', 'prepared with other arguments .tokenizer:'),
    ('not a dataset', 'holds no prepared dataset'),
    ('being written', 'is being written by another prepare'),
    ('output under a file', 'cannot be created: .* is a file'),
    ('empty output', '--output is empty'),
])
def test_prepare_refuses_bad_input_writing_nothing(corpus, prepared, tmp_path, case, match):
  root, _ = corpus
  out = tmp_path / 'out'
  kwargs = dict(input=f'{root}/a.txt', documents_mode='paragraph', num_workers=0)
  spec = 'byte'
  if case == 'missing input':
    kwargs['input'] = str(tmp_path / 'nope*.txt')
  elif case in ('empty input', 'blank paragraphs'):
    (tmp_path / 'e.txt').write_text('' if case == 'empty input' else '\n  \n\n\t\n')
    kwargs['input'] = str(tmp_path / 'e.txt')
  elif case == 'one document':
    kwargs['documents_mode'] = 'file'
  elif case == 'tokenizer file missing':
    spec = f'hf:{tmp_path}/tokenizer.json'
  elif case == 'bad jsonl':
    (tmp_path / 'd.jsonl').write_text('{"text": "a"}\n{"body": "b"}\n')
    kwargs['input'] = str(tmp_path / 'd.jsonl')
  elif case == 'no input':
    kwargs['input'] = ''
  elif case == 'bad fraction':
    kwargs['val_fraction'] = 1.0
  elif case == 'another tokenizer':
    out = tmp_path / 'copy'
    shutil.copytree(prepared[0], out)
  elif case == 'not a dataset':
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
  elif case == 'being written':
    out.mkdir()
    held = prepare._lock(str(out))  # As another prepare holds it.
  elif case == 'output under a file':
    (tmp_path / 'a_file').write_text('kept')
    out = tmp_path / 'a_file' / 'out'
  before, everything = _tree(out), _tree(tmp_path)
  with pytest.raises(ValueError, match=match) as e:
    prepare.prepare('' if case == 'empty output' else str(out), spec, **kwargs)
  if case == 'being written':
    os.close(held)
  assert '\n' not in str(e.value)
  assert _tree(out) == before and _tree(tmp_path) == everything  # Nothing written or touched.


def test_prepare_command_line(corpus, prepared):
  """Bad input: one line on stderr, exit 2; a finished dataset: rerunning is a no-op."""
  out, _ = prepared
  before = _tree(out)
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  common = [sys.executable, '-m', 'fastslow_jax.data.prepare', f'--output={out}',
            f'--input={corpus[0]}/*.txt', '--documents=paragraph', '--val_fraction=0.1',
            '--shard_tokens=2000', '--task_bytes=2000']
  bad = subprocess.run(common + ['--tokenizer=bpe:512'], cwd=ROOT, env=env, capture_output=True,
                       text=True)
  assert bad.returncode == 2 and bad.stderr.count('\n') == 1
  assert bad.stderr.startswith('error: ') and "'bpe:300' there, 'bpe:512' now" in bad.stderr
  again = prepare.prepare(str(out), 'bpe:300', input=f'{corpus[0]}/*.txt',
                          documents_mode='paragraph', val_fraction=0.1, shard_tokens=2000,
                          task_bytes=2000)
  assert again == json.loads((out / tokens.DATASET_FILE).read_text())  # Finished: a no-op.
  ok = subprocess.run([sys.executable, '-m', 'fastslow_jax.data.prepare', f'--output={out}',
                       '--verify'], cwd=ROOT, env=env, capture_output=True, text=True)
  assert ok.returncode == 0 and 'every shard matches' in ok.stdout
  assert _tree(out) == before


GOOD = object()  # Stands for a valid --input and --documents.
PREPARE_BAD_INPUT = [
    (['--input=missing*.txt'], 'matches no file'),
    (['--input=empty.txt'], 'holds no documents'),
    ([GOOD, '--tokenizer=hf:missing/tokenizer.json'], 'is not a file'),
    ([GOOD, '--tokenizer=sentencepiece:missing.model'], 'is not a file'),
    ([GOOD, '--output=a_file/out'], 'cannot be created: '),
    ([GOOD, '--output='], '--output is empty'),
    ([GOOD, '--val_fraction=0'], '--val_fraction=0.0 is invalid'),
    ([GOOD, '--num_workers=-1'], '--num_workers=-1'),
    (['--tfds_name=no_such_set', '--tfds_data_dir=.'], 'is not found'),
]


@pytest.mark.parametrize('every_case', [False, pytest.param(True, marks=pytest.mark.slow)])
def test_prepare_command_line_bad_input_is_one_line_exit_2(corpus, tmp_path, every_case):
  """Through the command line: one line on stderr (no library logging), exit status 2, and
  nothing written anywhere under the working directory (every case with the slow tests)."""
  (tmp_path / 'empty.txt').write_text('')
  (tmp_path / 'a_file').write_text('kept')
  good = [f'--input={corpus[0]}/a.txt', '--documents=paragraph']
  cases = [([a for arg in args for a in (good if arg is GOOD else [arg])], match)
           for args, match in PREPARE_BAD_INPUT[:None if every_case else 1]]
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  before = _tree(tmp_path)
  for args, match in cases:
    if not any(a.startswith('--output') for a in args):
      args = args + ['--output=out']
    done = subprocess.run([sys.executable, '-m', 'fastslow_jax.data.prepare', *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, (args, done.stderr[-2000:])
    assert lines[0].startswith('error: ') and match in lines[0], (args, lines)
    assert done.stdout == '' and _tree(tmp_path) == before, args


def test_shakespeare_with_bpe_2048_as_the_readme_says(shakespeare_path, tmp_path):
  """The worked example's first command: documents, tokens and bytes per token per split."""
  manifest = prepare.prepare(str(tmp_path / 'ds'), 'bpe:2048', input=str(shakespeare_path),
                             documents_mode='paragraph', num_workers=0)
  train, val = (manifest['splits'][s] for s in tokens.SPLITS)
  assert (train['documents'], val['documents']) == (6861, 361)
  assert round(train['tokens'], -3) == 361_000 and round(val['tokens'], -3) == 20_000
  assert round(train['bytes'] / train['tokens'], 2) == 2.89
  assert manifest['tokenizer']['vocab_size'] == 2048
  cfg = tokens_config(tmp_path / 'ds')
  tok, stream = data.source(cfg).tokenizer, all_tokens(tmp_path / 'ds', 'validation')
  text = shakespeare_path.read_text()
  assert all(doc in text for doc in split_documents(tok, stream))


# ------------------------------------------------------------------------------- tokens source


def test_tokens_source_windows_vocabulary_and_bits(corpus, prepared):
  out, _ = prepared
  cfg = tokens_config(out)
  manifest = json.loads((out / tokens.DATASET_FILE).read_text())
  train = data.make_dataset(cfg, seq_len=32, split='train')
  assert data.source(cfg).vocab_size == train.vocab_size == 300 and train.bits_per_token_unit == 'token'
  stream = all_tokens(out, 'train')
  assert len(manifest['splits']['train']['shards']) > 3  # Windows cross shard boundaries.
  assert len(train) == (len(stream) - 1) // 32
  windows = np.stack([train[i] for i in range(len(train))])
  assert windows.dtype == np.int32 and windows.shape == (len(train), 33)
  np.testing.assert_array_equal(windows[:, 1:].ravel(), stream[1:1 + 32 * len(train)])
  info = manifest['splits']['train']
  assert train.bytes_per_token == info['bytes'] / info['tokens'] > 1.5
  assert data.bits(train, 2.0) == pytest.approx({
      'bits_per_token': 2 / np.log(2), 'bits_per_byte': 2 / np.log(2) / train.bytes_per_token})
  text_cfg = schema.defaults().data
  text_cfg.update({'kind': 'text', 'path': str(corpus[0] / 'a.txt')})
  text_ds = data.make_dataset(text_cfg, seq_len=32, split='train')
  assert data.bits(text_ds, 2.0) == {'bits_per_byte': 2 / np.log(2)}  # As before: 1 byte/token.
  tok = data.source(cfg).tokenizer
  assert tok.fingerprint == data.source(cfg).fingerprint == manifest['tokenizer'][
      'fingerprint']
  assert data.source(text_cfg).tokenizer is tokenizers.BYTE and tokenizers.BYTE.eos_id == 256
  assert data.source(text_cfg).fingerprint == tokenizers.BYTE.fingerprint
  assert tok.eos_id == tok.eod_id == 0  # Generation stops at the end of a document.
  synthetic = schema.defaults().data
  ids = data.source(synthetic).tokenizer  # No text: prompts and samples are ids.
  assert ids.encode(' 3 14\n15 ').tolist() == [3, 14, 15] and ids.decode([9, 2]) == ' 9 2'
  assert ids.eos_id is None and ids.vocab_size == synthetic.vocab_size
  with pytest.raises(ValueError, match="'3 x' is not token ids"):
    ids.encode('3 x')
  assert data.source(synthetic).fingerprint is None


def test_same_windows_for_any_process_count_with_disjoint_shards(prepared):
  train = data.make_dataset(tokens_config(prepared[0]), seq_len=16, split='train')
  index = {train[i].tobytes(): i for i in range(len(train))}
  assert len(index) == len(train)
  whole = data.make_iterator(train, batch_size=16, seed=3)
  parts = {n: [data.make_iterator(train, batch_size=16 // n, seed=3, shard_index=i,
                                  shard_count=n) for i in range(n)] for n in (2, 4)}
  epoch = len(train) // 16
  for _ in range(epoch + 3):  # Into the second epoch.
    rows = [index[w.tobytes()] for w in next(whole)]
    for n, its in parts.items():
      per_process = [[index[w.tobytes()] for w in next(it)] for it in its]
      assert sorted(sum(per_process, [])) == sorted(rows)
      assert len(set(sum(per_process, []))) == 16  # Disjoint.


def test_exact_resume_mid_epoch_on_a_reopened_dataset(prepared):
  cfg = tokens_config(prepared[0])
  train = data.make_dataset(cfg, seq_len=16, split='train')
  it = data.make_iterator(train, batch_size=8, seed=1)
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(len(train) // 8 + 2)]  # Crosses an epoch boundary.
  fresh = data.make_iterator(data.make_dataset(cfg, seq_len=16, split='train'), batch_size=8,
                             seed=1)
  fresh.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(fresh), want)


def test_stream_pickles_and_reads_without_cached_descriptors(prepared, monkeypatch):
  stream, _ = tokens.open_split(str(prepared[0]), 'train')
  whole = stream[:]
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(stream))[:], whole)
  monkeypatch.setattr(tokens, '_may_open', lambda n: False)  # Too many shards to keep open.
  uncached, _ = tokens.open_split(str(prepared[0]), 'train')
  np.testing.assert_array_equal(uncached[5:5000], whole[5:5000])
  assert not uncached._fds


def test_damaged_or_missing_datasets_are_refused(prepared, tmp_path):
  out = tmp_path / 'ds'
  shutil.copytree(prepared[0], out)
  cfg = tokens_config(out)
  manifest = json.loads((out / tokens.DATASET_FILE).read_text())
  shard = out / manifest['splits']['train']['shards'][1]['file']
  good = shard.read_bytes()

  def refused(match, fn=lambda: data.make_dataset(cfg, seq_len=16, split='train')):
    with pytest.raises(ValueError, match=match) as e:
      fn()
    assert '\n' not in str(e.value)

  shard.write_bytes(good[:-2])  # Truncated.
  refused('has .* bytes, not .* tokens')
  shard.write_bytes(bytes([good[0] ^ 1]) + good[1:])  # Same size, other content.
  refused('does not match its checksum', lambda: tokens.verify(str(out)))
  shard.write_bytes(b'\xff\xff' + good[2:])  # An id past the vocabulary.
  ds = data.make_dataset(cfg, seq_len=16, split='train')
  first = manifest['splits']['train']['shards'][0]['tokens']
  refused('holds token id 65535 >= the vocabulary', lambda: ds[first // 16])
  shard.write_bytes(good)
  (out / tokenizers.FILE_NAMES['bpe']).unlink()
  refused('tokenizer.json is missing', lambda: data.source(cfg).tokenizer)
  (out / tokens.DATASET_FILE).unlink()
  refused('has no dataset.json', lambda: data.source(cfg).vocab_size)
  refused('is not a directory', lambda: data.source(tokens_config(tmp_path / 'nope')).vocab_size)
  refused('data.path is empty', lambda: data.source(tokens_config('')).vocab_size)


def test_a_run_refuses_data_from_another_tokenizer(prepared):
  cfg = tokens_config(prepared[0])
  mine = data.source(cfg).fingerprint
  data.check_tokenizer(data.source(cfg), mine)
  data.check_tokenizer(data.source(cfg), None)  # Nothing recorded (an older run): nothing to compare.
  with pytest.raises(ValueError, match=r'trained on tokenizer byte-60418b7945bd21d3, but '
                     r"data.path='.*' has bpe-[0-9a-f]{16}: use data prepared with the same"):
    data.check_tokenizer(data.source(cfg), tokenizers.BYTE.fingerprint)


def test_train_refuses_a_missing_dataset_in_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'fastslow_jax.train', f'--workdir={tmp_path}/run',
       '--config=configs/fastslow.py:arm=dense,size=tiny', '--config.data.kind=tokens',
       f'--config.data.path={tmp_path}/missing'],
      cwd=ROOT, env={**os.environ, 'PYTHONPATH': str(ROOT)}, capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("error: data.path='")
  assert 'is not a directory' in out.stderr and not (tmp_path / 'run').exists()


# -------------------------------------------------------------------------------- in a training run


def test_train_evaluate_and_refuse_another_tokenizer(prepared, corpus, tmp_path):
  """A run on prepared tokens: vocabulary from the tokenizer, bits per byte in evaluation, and
  the workdir refuses data prepared with another tokenizer (before anything is written)."""
  from fastslow_jax import configlib, evaluate, restoring, train
  out = tmp_path / 'ds'  # A copy of the dataset: it is prepared again with another tokenizer.
  shutil.copytree(prepared[0], out)
  config = configlib.load('fastslow:arm=coupled,size=tiny,P=8', {
      'model.seq_len': 32, 'model.d_model': 32, 'model.mlp_dim': 64, 'model.phi_dim': 64,
      'model.num_heads': 2, 'model.slow_num_heads': 2, 'batch_size': 8, 'total_steps': 2,
      'eval_batches': 1, 'checkpoint_every': 2, 'data.kind': 'tokens', 'data.path': str(out),
      'mesh.data': 1})
  workdir = tmp_path / 'run'
  train.train(config, workdir, devices=jax.devices()[:1])
  result = evaluate.evaluate(str(workdir), devices=jax.devices()[:1], mesh='1,1,1')
  bytes_per_token = data.make_dataset(config.data, seq_len=32, split='validation').bytes_per_token
  assert 1 < bytes_per_token < 10
  np.testing.assert_allclose(result['bits_per_byte'],
                             result['loss'] / bytes_per_token / np.log(2), rtol=1e-9)
  assert result['bits_per_token'] > result['bits_per_byte']
  other = tmp_path / 'byte-ds'
  prepare.prepare(str(other), 'byte', input=f'{corpus[0]}/*.txt', documents_mode='paragraph',
                  val_fraction=0.1, num_workers=0)
  config.data.path = str(other)
  config.model.vocab_size = -1
  before = sorted(p.name for p in workdir.iterdir())
  with pytest.raises(ValueError, match='trained on tokenizer bpe') as e:
    train.train(config, workdir, devices=jax.devices()[:1])
  assert '\n' not in str(e.value) and sorted(p.name for p in workdir.iterdir()) == before
  # The run's own data.path prepared again with another tokenizer: evaluation and generation
  # (which restores through evaluate.restore) refuse it rather than score or decode other ids.
  shutil.rmtree(out)
  shutil.copytree(other, out)
  for call in (lambda: evaluate.evaluate(str(workdir), devices=jax.devices()[:1], mesh='1,1,1'),
               lambda: restoring.restore(str(workdir), devices=jax.devices()[:1], mesh='1,1,1')):
    with pytest.raises(ValueError, match=r'trained on tokenizer bpe-\w+, but data.path=.* has '
                       r'byte-\w+: use data prepared with the same tokenizer') as e:
      call()
    assert '\n' not in str(e.value) and sorted(p.name for p in workdir.iterdir()) == before
