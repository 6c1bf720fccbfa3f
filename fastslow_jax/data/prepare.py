r"""Tokenize a corpus once into sharded flat token files, for `config.data.kind='tokens'`.

    python -m fastslow_jax.data.prepare --input='corpus/*.txt' --documents=paragraph \
        --tokenizer=bpe:2048 --output=data/corpus-bpe2048
    python -m fastslow_jax.data.prepare --tfds_name=wikipedia/20230601.en \
        --tfds_data_dir=~/tensorflow_datasets --tokenizer=hf:gpt2/tokenizer.json --output=...

Documents (`documents.py`) are split into train and validation, cut into pieces and tokenized in
`--num_workers` processes; each split's tokens go to shards of about `--shard_tokens` tokens
(layout in `tokens.py`). A shard is written under a temporary name, synced and renamed, then
recorded in DIR/prepare.json; dataset.json, the only file a reader trusts, comes last. Rerunning
the same command after a kill resumes from the last finished shard and writes the same bytes as
an uninterrupted run (tokenization is split into fixed tasks that do not depend on the number of
workers). `--verify` checks a finished DIR's checksums.
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import glob
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterator

import numpy as np
import tqdm

from fastslow_jax import rundir
from fastslow_jax.configs import schema
from fastslow_jax.data import documents, tokenizers, tokens
from fastslow_jax.errors import UsageError

DEFAULT_TASK_BYTES = 1 << 20  # Text per worker task: the unit of work and of resumption.
DEFAULT_SHARD_TOKENS = 1 << 27  # 256 MiB of uint16 per shard.
DEFAULT_BPE_TRAIN_BYTES = 100 << 20  # bpe:<vocab> learns from the first 100 MiB of train text.


def prepare(output: str, tokenizer: str = 'byte', *, input: str = '', tfds_name: str = '',
            documents_mode: str = 'file', jsonl_field: str = 'text',
            val_fraction: float | None = None, num_workers: int | None = None,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, task_bytes: int = DEFAULT_TASK_BYTES,
            bpe_train_bytes: int = DEFAULT_BPE_TRAIN_BYTES, **tfds_fields) -> dict:
  """Writes (or resumes, or finds finished) the dataset in `output`; returns its manifest.

  `tfds_fields`: tfds_data_dir, tfds_text_feature, tfds_train_split, tfds_val_split (defaults
  from the data config). Bad arguments or input raise a one-line UsageError before anything is
  written.
  """
  if not str(output).strip():
    raise UsageError('--output is empty: name the directory to write the dataset to.')
  cfg = schema.defaults().data
  cfg.update(dict(tfds_name=tfds_name, **tfds_fields))
  val_fraction = cfg.val_fraction if val_fraction is None else val_fraction
  num_workers = os.cpu_count() if num_workers is None else num_workers
  _check_numbers(val_fraction, num_workers, shard_tokens, task_bytes, bpe_train_bytes)
  kind, _ = tokenizers.parse_spec(tokenizer)
  given = None if kind == 'bpe' else tokenizers.from_spec(tokenizer)
  inputs = _inputs(input, cfg, documents_mode, jsonl_field)
  arguments = json.loads(json.dumps({
      'inputs': [s.describe() for s in inputs], 'tokenizer': tokenizer,
      'tokenizer_file': given and given.fingerprint, 'val_fraction': val_fraction,
      'shard_tokens': shard_tokens, 'task_bytes': task_bytes,
      'bpe_train_bytes': bpe_train_bytes if kind == 'bpe' else None,
  }))
  out = os.path.expanduser(output)
  state, complete = _existing_state(out, arguments)
  if complete:
    print(f'{output} is already prepared with these arguments.')
    return state
  rundir.check_writable_dir(out, '--output')
  counts = _count_documents(inputs, val_fraction)
  try:
    os.makedirs(out, exist_ok=True)  # Everything has been checked: the first write.
  except OSError as e:
    raise UsageError(f'--output {out} cannot be created ({e.strerror or e}): choose another '
                     '--output.') from None
  lock = _lock(out)
  try:
    state, complete = _existing_state(out, arguments)  # Again, under the lock.
    if complete:
      return state
    return _write(out, state, arguments, given, Plan(inputs, counts, val_fraction, task_bytes),
                  num_workers, shard_tokens, bpe_train_bytes)
  finally:
    os.close(lock)


def _lock(out: str) -> int:
  """An exclusive lock on the directory (held until its fd is closed): two prepares into one
  directory would interleave shards."""
  fd = os.open(out, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    os.close(fd)
    raise UsageError(f'--output={out!r} is being written by another prepare: wait for it, or '
                     'use another --output.') from None
  return fd


def _write(out, state, arguments, given, plan, num_workers, shard_tokens, bpe_train_bytes):
  """Starts or resumes writing `out`: tokenizer, shards, then dataset.json."""
  if state is None:
    state = {'format': tokens.FORMAT, 'arguments': arguments, 'tokenizer': None,
             'splits': {s: {'shards': []} for s in tokens.SPLITS}}
  for stale in glob.glob(os.path.join(glob.escape(out), '*.tmp')):
    os.remove(stale)  # Half-written shards or JSON of a killed run.
  _write_json(os.path.join(out, tokens.PROGRESS_FILE), state)
  tok = _tokenizer(out, state, given, plan, bpe_train_bytes)
  _tokenize(out, state, tok, plan, num_workers, shard_tokens)
  return _finish(out, state)


def _check_numbers(val_fraction, num_workers, shard_tokens, task_bytes, bpe_train_bytes) -> None:
  if not 0 < val_fraction < 1:
    raise UsageError(f'--val_fraction={val_fraction} is invalid: use a value in (0, 1).')
  if num_workers < 0:
    raise UsageError(f'--num_workers={num_workers} is invalid: use 0 (no worker processes) or '
                     'more.')
  for name, value in (('shard_tokens', shard_tokens), ('task_bytes', task_bytes),
                      ('bpe_train_bytes', bpe_train_bytes)):
    if value < 1:
      raise UsageError(f'--{name}={value} is invalid: use a positive integer.')


def _inputs(input: str, cfg, mode: str, field: str) -> list:
  if bool(input) == bool(cfg.tfds_name):
    raise UsageError('give exactly one of --input (local files) and --tfds_name (a TFDS '
                     'dataset prepared as array_record).')
  if input:
    return [documents.TextFiles(input, mode, field)]
  return documents.tfds_inputs(cfg)


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, obj: dict) -> None:
  _write_atomic(path, (json.dumps(obj, indent=1) + '\n').encode())


def _write_atomic(path: str, data: bytes) -> None:
  """Writes a file whole or not at all: a synced temporary, renamed over `path`."""
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  _sync_dir(os.path.dirname(path))


def _sync_dir(directory: str) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _existing_state(out: str, arguments: dict) -> tuple[dict | None, bool]:
  """(the dataset in `out` made with `arguments`, whether it is complete); (None, False) when
  `out` is new or empty. Refuses a directory holding anything else."""
  if not os.path.exists(out):
    return None, False
  if not os.path.isdir(out):
    raise UsageError(f'--output={out!r} is a file: give a directory.')
  for name, complete in ((tokens.DATASET_FILE, True), (tokens.PROGRESS_FILE, False)):
    path = os.path.join(out, name)
    if os.path.isfile(path):
      try:
        state = _read_json(path)
      except ValueError:
        raise UsageError(f'{path} is damaged: delete --output={out!r} and prepare again.'
                         ) from None
      if state.get('arguments') != arguments:
        raise UsageError(f'--output={out!r} holds a dataset prepared with other arguments '
                         f'({_difference(state.get("arguments") or {}, arguments)}): use a new '
                         '--output, or delete that directory.')
      return state, complete
  if os.listdir(out):
    raise UsageError(f'--output={out!r} is not empty and holds no prepared dataset: use a new or '
                     'empty directory.')
  return None, False


def _difference(old: dict, new: dict) -> str:
  first = ('tokenizer', 'tokenizer_file', 'inputs')  # The likeliest reasons first.
  key = next(k for k in [*first, *sorted(set(old) | set(new))] if old.get(k) != new.get(k))
  if key == 'inputs':
    return 'the input files or their contents differ'
  return f'{key}: {old.get(key)!r} there, {new.get(key)!r} now'


def _count_documents(inputs: list, val_fraction: float) -> list[int]:
  """Documents per input (reading it all: bad records fail here, before any write)."""
  counts = []
  total = sum(s.bytes or 0 for s in inputs) or None
  with _bar(total, 'checking input', 'B') as bar:
    for stream in inputs:
      counts.append(stream.count(bar.update))
  if not sum(counts):
    raise UsageError('the input holds no documents (empty files or only blank lines): give '
                     'files with text.')
  for stream, n in zip(inputs, counts):
    if stream.split is None and not 1 <= documents.holdout(n, val_fraction) < n:
      raise UsageError(f'the input holds {n} document(s), too few to hold out validation: use '
                       '--documents=paragraph or line, more files, or another --val_fraction.')
    if stream.split == 'validation' and not n:
      raise UsageError(f'--tfds_val_split={stream.name!r} has no documents: name another split.')
  return counts


def _bar(total, desc: str, unit: str) -> tqdm.tqdm:
  from fastslow_jax import metrics  # Its interactive() check; imported late (it imports jax).
  return tqdm.tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == 'B',
                   dynamic_ncols=True, disable=not metrics.interactive())


# ----------------------------------------------------------------------------------- tokenizer


def _tokenizer(out: str, state: dict, given, plan: Plan, bpe_train_bytes: int):
  """The dataset's tokenizer: recorded in the state, or the given one, or BPE trained now;
  its model file is saved in `out` before the state names it."""
  if state['tokenizer'] is not None:
    return tokenizers.from_record(state['tokenizer'], out)
  spec = state['arguments']['tokenizer']
  if given is None:
    kind, vocab = tokenizers.parse_spec(spec)
    sample = plan.train_text(bpe_train_bytes)
    print(f'Training {spec} on {bpe_train_bytes / 2**20:.0f} MiB of train text at most...')
    given = tokenizers.from_blob(kind, tokenizers.train_bpe(sample, int(vocab)), spec)
  if given.blob:
    _write_atomic(os.path.join(out, tokenizers.FILE_NAMES[given.kind]), given.blob)
  state['tokenizer'] = tokenizers.record(given)
  state['dtype'] = tokenizers.token_dtype(given.vocab_size).name
  _write_json(os.path.join(out, tokens.PROGRESS_FILE), state)
  return given


@dataclasses.dataclass
class Plan:
  """What gets tokenized in which order: the inputs, their document counts and the split rule."""

  inputs: list
  counts: list[int]
  val_fraction: float
  task_bytes: int

  def tasks(self) -> Iterator[tuple[str, list[documents.Piece]]]:
    """(split, pieces of about `task_bytes`) in a fixed order: the units of work."""
    pending = {s: [] for s in tokens.SPLITS}
    size = dict.fromkeys(tokens.SPLITS, 0)
    for stream, n in zip(self.inputs, self.counts):
      num_val, doc = documents.holdout(n, self.val_fraction), 0
      for piece, ends in stream.pieces():
        split = stream.split or ('validation' if documents.is_validation(doc, n, num_val)
                                 else 'train')
        doc += ends
        pending[split].append((piece, ends))
        size[split] += len(piece)
        if size[split] >= self.task_bytes:
          yield split, pending[split]
          pending[split], size[split] = [], 0
      if doc != n:
        raise UsageError(f'the input changed while being prepared ({doc} documents, {n} '
                         'counted): rerun when it is stable.')
    for split in tokens.SPLITS:
      if pending[split]:
        yield split, pending[split]

  def train_text(self, limit: int) -> Iterator[str]:
    """The first `limit` bytes of train documents, as text pieces."""
    seen = 0
    for split, items in self.tasks():
      if split != 'train':
        continue
      for piece, _ in items:
        yield piece.decode('utf-8', 'replace')
        seen += len(piece)
        if seen >= limit:
          return


_WORKER_TOKENIZER: tokenizers.Tokenizer | None = None


def _init_worker(kind: str, blob: bytes, spec: str) -> None:
  os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # One thread per worker process.
  global _WORKER_TOKENIZER
  _WORKER_TOKENIZER = tokenizers.from_blob(kind, blob, spec)


def _encode(items: list[documents.Piece], tok: tokenizers.Tokenizer | None = None):
  """(token ids with an end of document after each document's last piece, bytes, documents)."""
  tok = tok or _WORKER_TOKENIZER
  eod = np.array([tok.eod_id], np.int64)
  ids = tok.encode_batch([piece for piece, _ in items])
  parts = [a for (_, ends), t in zip(items, ids) for a in ((t, eod) if ends else (t,))]
  out = np.concatenate(parts).astype(tokenizers.token_dtype(tok.vocab_size))
  return out, sum(len(p) for p, _ in items), sum(e for _, e in items)


def _tokenize(out: str, state: dict, tok, plan: Plan, num_workers: int, shard_tokens: int):
  """Runs every task not already in a finished shard, in order, into the split's writer."""
  writers = {s: ShardWriter(out, s, state, shard_tokens) for s in tokens.SPLITS}
  done = {s: sum(sh['tasks'] for sh in state['splits'][s]['shards']) for s in tokens.SPLITS}
  seen = dict.fromkeys(tokens.SPLITS, 0)
  bar = _bar(sum(plan.counts), f'tokenizing ({tok.spec})', 'doc')
  start, total_tokens, total_bytes = time.perf_counter(), 0, 0
  pool = None
  if num_workers:
    context = multiprocessing.get_context('spawn')  # No fork of a process that has threads.
    pool = context.Pool(num_workers, _init_worker, (tok.kind, tok.blob, tok.spec))
  pending = collections.deque()

  def drain_one():
    nonlocal total_tokens, total_bytes
    split, result = pending.popleft()
    ids, nbytes, ndocs = result.get() if pool else result
    writers[split].add(ids, nbytes, ndocs)
    total_tokens, total_bytes = total_tokens + len(ids), total_bytes + nbytes
    elapsed = time.perf_counter() - start
    bar.set_postfix_str(f'{total_tokens / elapsed / 1e6:.2f}M tok/s, '
                        f'{total_bytes / elapsed / 1e6:.1f} MB/s', refresh=False)
    bar.update(ndocs)

  try:
    for split, items in plan.tasks():
      seen[split] += 1
      if seen[split] <= done[split]:  # In a shard finished by an earlier run.
        bar.update(sum(e for _, e in items))
        continue
      pending.append((split, pool.apply_async(_encode, (items,)) if pool
                      else _encode(items, tok)))
      while len(pending) > 2 * num_workers + 2:  # Bounded: memory stays flat.
        drain_one()
    while pending:
      drain_one()
  finally:
    if pool:
      pool.terminate()
    bar.close()
  for writer in writers.values():
    writer.close_shard()


class ShardWriter:
  """Appends one split's tokens to shards of at least `shard_tokens` tokens (whole tasks).

  A shard is written as NAME.tmp, synced, renamed, and then added to the state file.
  """

  def __init__(self, out: str, split: str, state: dict, shard_tokens: int):
    self.out, self.split, self.state, self.shard_tokens = out, split, state, shard_tokens
    self.file = None

  def add(self, ids: np.ndarray, nbytes: int, ndocs: int) -> None:
    if self.file is None:
      index = len(self.state['splits'][self.split]['shards'])
      self.name = tokens.shard_name(self.split, index)
      self.file = open(os.path.join(self.out, self.name + '.tmp'), 'wb')
      self.counts, self.hash = dict(tokens=0, bytes=0, documents=0, tasks=0), hashlib.sha256()
    data = ids.astype(ids.dtype.newbyteorder('<'), copy=False).tobytes()
    self.file.write(data)
    self.hash.update(data)
    for key, value in (('tokens', len(ids)), ('bytes', nbytes), ('documents', ndocs),
                       ('tasks', 1)):
      self.counts[key] += value
    if self.counts['tokens'] >= self.shard_tokens:
      self.close_shard()

  def close_shard(self) -> None:
    if self.file is None:
      return
    self.file.flush()
    os.fsync(self.file.fileno())
    self.file.close()
    self.file = None
    final = os.path.join(self.out, self.name)
    os.replace(final + '.tmp', final)
    _sync_dir(self.out)
    record = {'file': self.name, **self.counts, 'sha256': self.hash.hexdigest()}
    self.state['splits'][self.split]['shards'].append(record)
    _write_json(os.path.join(self.out, tokens.PROGRESS_FILE), self.state)


def _finish(out: str, state: dict) -> dict:
  """dataset.json (totals per split), then the progress file goes."""
  manifest = state
  for split in tokens.SPLITS:
    info = manifest['splits'][split]
    for key in ('tokens', 'bytes', 'documents'):
      info[key] = sum(shard[key] for shard in info['shards'])
  _write_json(os.path.join(out, tokens.DATASET_FILE), manifest)
  os.remove(os.path.join(out, tokens.PROGRESS_FILE))
  _sync_dir(out)
  for split in tokens.SPLITS:
    info = manifest['splits'][split]
    print(f'{split}: {info["documents"]} documents, {info["bytes"] / 1e6:.1f} MB, '
          f'{info["tokens"]} tokens ({info["bytes"] / max(1, info["tokens"]):.2f} bytes/token) '
          f'in {len(info["shards"])} shard(s)')
  return manifest


# ------------------------------------------------------------------------------------------ CLI


def define_flags() -> None:
  from absl import flags

  defaults = schema.defaults().data
  flags.DEFINE_string('output', None, 'Directory to write (or resume, or verify).')
  flags.DEFINE_string('input', '', 'Local text files: comma-separated paths or globs (.gz read '
                      'as gzip; *.jsonl as JSON lines).')
  flags.DEFINE_string('tokenizer', 'byte', f'One of {tokenizers.SPEC_HELP}.')
  flags.DEFINE_enum('documents', 'file', list(documents.MODES),
                    'What one document of --input is: a file, a paragraph, a line.')
  flags.DEFINE_string('jsonl_field', 'text', 'The text field of *.jsonl records.')
  flags.DEFINE_float('val_fraction', defaults.val_fraction,
                     'Documents held out for validation (without a TFDS validation split).',
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer('num_workers', os.cpu_count(), 'Tokenizer processes (0: in this one).',
                       lower_bound=0)
  flags.DEFINE_integer('shard_tokens', DEFAULT_SHARD_TOKENS, 'Tokens per shard (at least).',
                       lower_bound=1)
  flags.DEFINE_integer('task_bytes', DEFAULT_TASK_BYTES, 'Text per worker task (and per step '
                       'of resumption).', lower_bound=1)
  flags.DEFINE_integer('bpe_train_bytes', DEFAULT_BPE_TRAIN_BYTES,
                       'Train text bpe:<vocab> learns from (the first this many bytes).',
                       lower_bound=1)
  for name in ('tfds_name', 'tfds_data_dir', 'tfds_text_feature', 'tfds_train_split',
               'tfds_val_split'):
    flags.DEFINE_string(name, defaults[name], f'As config.data.{name}; --tfds_name replaces '
                        '--input.' if name == 'tfds_name' else f'As config.data.{name}.')
  flags.DEFINE_bool('verify', False, 'Check the shards of --output against their checksums.')
  flags.mark_flags_as_required(['output'])


def main(argv) -> None:
  from absl import flags

  del argv
  f = flags.FLAGS
  if f.verify:
    counts = tokens.verify(f.output)
    print(f'{f.output}: every shard matches its checksum ({counts}).')
    return
  prepare(f.output, f.tokenizer, input=f.input, documents_mode=f.documents,
          jsonl_field=f.jsonl_field, val_fraction=f.val_fraction, num_workers=f.num_workers,
          shard_tokens=f.shard_tokens, task_bytes=f.task_bytes,
          bpe_train_bytes=f.bpe_train_bytes,
          tfds_name=f.tfds_name, tfds_data_dir=f.tfds_data_dir,
          tfds_text_feature=f.tfds_text_feature, tfds_train_split=f.tfds_train_split,
          tfds_val_split=f.tfds_val_split)


def run() -> None:
  """The command line: bad flags or input are one line on stderr and exit status 2."""
  from absl import app

  from fastslow_jax import cli

  cli.define_checked(define_flags)

  def wrapped(argv):
    cli.quiet_library_logs()
    try:
      main(argv)
    except ValueError as e:
      cli.error(e)
    except KeyboardInterrupt:
      cli.error(ValueError('interrupted: rerun the same command to resume.'), status=130)

  app.run(wrapped, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
