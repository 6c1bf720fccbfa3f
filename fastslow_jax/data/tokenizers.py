"""Tokenizers behind one interface: bytes, BPE trained here, a tokenizer.json, SentencePiece.

    tok = tokenizers.from_spec('hf:gpt2/tokenizer.json')   # or 'byte', 'sentencepiece:m.model'
    ids = tok.encode('text')                     # int64 [n], no end-of-document
    tok.decode(ids) == 'text'
    tok.encode_documents(['a', 'b'])             # each document followed by tok.eod_id
    tok.vocab_size, tok.eod_id, tok.fingerprint  # 'bpe-1f2e...': kind + a hash of the model file

Specs (`prepare --tokenizer=SPEC`):
  byte                     UTF-8 bytes 0..255 + END_OF_DOCUMENT 256 (vocabulary 257).
  bpe:<vocab>              byte-level BPE trained on the input (`train_bpe`); '<|endoftext|>' is
                           its id 0 and ends every document.
  hf:<tokenizer.json>      an existing Hugging Face `tokenizers` file (GPT-2, Llama, ...).
  sentencepiece:<.model>   an existing SentencePiece model.

End of document: hf and sentencepiece use the model's own end-of-text token when it has one
(`EOD_NAMES` for hf, `eos_id()` for SentencePiece); otherwise one id is appended after the model's
vocabulary (eod_id = its size, vocab_size = its size + 1), which only a model trained on the
prepared data knows. Text that happens to spell a special token is encoded as text.

Everything reads local files; nothing needs the internet. The model file (bpe / hf /
sentencepiece) is saved beside a prepared dataset (`FILE_NAMES`) and `fingerprint` hashes it, so
a run can tell whether two datasets were tokenized alike.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import numpy as np

from fastslow_jax.errors import UsageError

KINDS = ('byte', 'bpe', 'hf', 'sentencepiece')
END_OF_DOCUMENT = 256  # The byte tokenizer's end-of-document id; its vocabulary is 257.
VOCAB_SIZE = 257
EOD_TEXT = '<|endoftext|>'  # How decode() shows an end of document that has no text of its own.
# An hf tokenizer's end-of-text token: the first of these among its special tokens.
EOD_NAMES = ('<|endoftext|>', '<|end_of_text|>', '</s>', '<eos>', '<|eot_id|>')
# The model file saved with a prepared dataset, per kind.
FILE_NAMES = {'bpe': 'tokenizer.json', 'hf': 'tokenizer.json', 'sentencepiece': 'tokenizer.model'}
SPEC_HELP = 'byte, bpe:<vocab size>, hf:<tokenizer.json> or sentencepiece:<file.model>'


class Tokenizer:
  """encode / decode / vocab_size / eod_id / fingerprint; subclasses give _encode and _decode."""

  kind: str
  spec: str
  vocab_size: int
  eod_id: int
  eod_text: str = EOD_TEXT
  eod_token: str | None = None  # The end of document as a token of the model file, if it is one.
  blob: bytes = b''  # The model file's bytes (empty for byte).

  @property
  def eos_id(self) -> int | None:
    """Where generation stops: the end of a document."""
    return self.eod_id

  @property
  def fingerprint(self) -> str:
    """A stable id of this exact tokenization: '<kind>-<16 hex digits of sha256>'."""
    material = f'{self.kind}\0{self.eod_id}\0{self.vocab_size}\0'.encode() + self.blob
    return f'{self.kind}-{hashlib.sha256(material).hexdigest()[:16]}'

  def encode(self, text: str | bytes) -> np.ndarray:
    """Token ids (int64) of one text, without an end-of-document."""
    return self.encode_batch([text])[0]

  def encode_batch(self, texts: list[str | bytes]) -> list[np.ndarray]:
    """encode() of each text; bytes are decoded as UTF-8 (invalid sequences replaced)."""
    return self._encode([t.decode('utf-8', 'replace') if isinstance(t, bytes) else t
                         for t in texts])

  def decode(self, ids) -> str:
    """The text of `ids`; an end of document shows as `eod_text`."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    cuts = np.flatnonzero(ids == self.eod_id)
    parts = np.split(ids, cuts)
    return self.eod_text.join(self._decode(p[1:] if i else p) for i, p in enumerate(parts))

  def encode_documents(self, documents: Iterable[str | bytes]) -> np.ndarray:
    """All documents, each followed by `eod_id`, as one stream in `token_dtype(vocab_size)`."""
    docs = list(documents)
    eod = np.array([self.eod_id], np.int64)
    parts = [a for ids in self.encode_batch(docs) for a in (ids, eod)]
    dtype = token_dtype(self.vocab_size)
    return np.concatenate(parts).astype(dtype) if parts else np.zeros((0,), dtype)

  def bytes_per_token(self, documents: Iterable[str | bytes]) -> float:
    """UTF-8 bytes per token (end-of-document ids counted) over `documents`."""
    docs = [d.encode() if isinstance(d, str) else bytes(d) for d in documents]
    return sum(map(len, docs)) / max(1, len(self.encode_documents(docs)))

  def _encode(self, texts: list[str]) -> list[np.ndarray]:
    raise NotImplementedError

  def _decode(self, ids: np.ndarray) -> str:
    raise NotImplementedError

  def __repr__(self) -> str:
    return f'Tokenizer({self.spec!r}, vocab_size={self.vocab_size}, eod_id={self.eod_id})'


def token_dtype(vocab_size: int) -> np.dtype:
  """The smallest unsigned dtype that stores every id: uint16 up to 65536 ids, else uint32."""
  return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes + END_OF_DOCUMENT: the ids the `text` and `tfds` sources have always used."""

  kind = spec = 'byte'
  vocab_size, eod_id = VOCAB_SIZE, END_OF_DOCUMENT

  def encode_batch(self, texts):
    # Bytes pass through untouched (no decoding): a file's raw bytes are its tokens.
    return [np.frombuffer(t if isinstance(t, bytes) else t.encode('utf-8'), np.uint8)
            .astype(np.int64) for t in texts]

  def _decode(self, ids):
    return bytes(np.asarray(ids, np.uint8)).decode('utf-8', 'replace')


BYTE = ByteTokenizer()


class IdsTokenizer(Tokenizer):
  """Token ids written as text, for a source with no text of its own (synthetic): encode('3 14')
  is [3, 14]; decode([15, 9]) is ' 15 9', a space before each id, so it continues a prompt."""

  kind = spec = 'ids'
  eod_id = None  # No end of document: generation runs to its length.

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size

  def _encode(self, texts):
    out = []
    for text in texts:
      try:
        out.append(np.asarray([int(t) for t in text.split()], np.int64))
      except ValueError:
        raise UsageError(f'{text[:40]!r} is not token ids: give ids separated by spaces (the '
                         'synthetic source has no text).') from None
    return out

  def decode(self, ids) -> str:
    return ''.join(f' {int(i)}' for i in np.asarray(ids).reshape(-1))


class HFTokenizer(Tokenizer):
  """A Hugging Face `tokenizers` model: `bpe` (trained by `train_bpe`) or `hf` (a user's file)."""

  def __init__(self, kind: str, blob: bytes, spec: str):
    import tokenizers as hf  # Lazily: only datasets that use it pay for the import.

    self.kind, self.blob, self.spec = kind, blob, spec
    try:
      self._tok = hf.Tokenizer.from_str(blob.decode('utf-8'))
    except Exception as e:  # A malformed file: JSON or model errors of several types.
      raise UsageError(f'{spec!r} is not a readable tokenizer.json ({type(e).__name__}): give a '
                       'file saved by the tokenizers library.') from None
    self._tok.encode_special_tokens = True  # Text spelling '<|endoftext|>' stays text.
    size = self._tok.get_vocab_size(with_added_tokens=True)
    special = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
    name = next((n for n in EOD_NAMES if n in special), None)
    if name is not None:
      self.eod_id, self.eod_text, self.eod_token = special[name], name, name
      self.vocab_size = max(size, self.eod_id + 1)
    else:  # No end-of-text token: one id after the vocabulary.
      self.eod_id, self.vocab_size = size, size + 1

  def _encode(self, texts):
    encodings = self._tok.encode_batch_fast(texts, add_special_tokens=False)
    return [np.asarray(e.ids, np.int64) for e in encodings]

  def _decode(self, ids):
    return self._tok.decode(ids.tolist(), skip_special_tokens=False)


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model; its eos ends documents (or an appended id when it has none)."""

  kind = 'sentencepiece'

  def __init__(self, blob: bytes, spec: str):
    import sentencepiece as spm  # Lazily, as above.

    self.blob, self.spec = blob, spec
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(blob)
    except Exception as e:  # RuntimeError / OSError on a file that is not a model.
      raise UsageError(f'{spec!r} is not a readable SentencePiece model ({type(e).__name__}): '
                       'give a .model file written by SentencePieceTrainer.') from None
    size, eos = self._sp.vocab_size(), self._sp.eos_id()
    if eos >= 0:
      self.eod_id, self.eod_text, self.vocab_size = eos, self._sp.id_to_piece(eos), size
    else:
      self.eod_id, self.vocab_size = size, size + 1

  def _encode(self, texts):
    return [np.asarray(ids, np.int64) for ids in self._sp.encode(texts, num_threads=1)]

  def _decode(self, ids):
    return self._sp.decode(ids.tolist())


# ------------------------------------------------------------------------------------- building


def parse_spec(spec: str) -> tuple[str, str]:
  """'bpe:2048' -> ('bpe', '2048'); checks the form (and that a named file exists)."""
  kind, _, arg = str(spec).partition(':')
  if kind not in KINDS or (kind == 'byte') != (arg == ''):
    raise UsageError(f'--tokenizer={spec!r} is unknown: use {SPEC_HELP}.')
  if kind == 'bpe' and not (arg.isdigit() and VOCAB_SIZE + 1 <= int(arg) <= 2**32):
    raise UsageError(f'--tokenizer={spec!r} needs a vocabulary size of at least '
                     f'{VOCAB_SIZE + 1} (256 bytes, the end of document and one merge): '
                     'e.g. bpe:2048.')
  if kind in ('hf', 'sentencepiece') and not os.path.isfile(os.path.expanduser(arg)):
    raise UsageError(f'--tokenizer={spec!r}: {arg} is not a file: give the path of an existing '
                     f'{FILE_NAMES[kind]}.')
  return kind, arg


def from_blob(kind: str, blob: bytes, spec: str) -> Tokenizer:
  """The tokenizer of `kind` whose model file holds `blob` (ignored for byte)."""
  if kind == 'byte':
    return BYTE
  if kind == 'sentencepiece':
    return SentencePieceTokenizer(blob, spec)
  return HFTokenizer(kind, blob, spec)


def from_spec(spec: str) -> Tokenizer:
  """The tokenizer of a `byte`, `hf:` or `sentencepiece:` spec (bpe needs `train_bpe` first)."""
  kind, arg = parse_spec(spec)
  if kind == 'bpe':
    raise UsageError(f'--tokenizer={spec!r} is trained on the input: prepare a dataset with it.')
  blob = b''
  if arg:
    with open(os.path.expanduser(arg), 'rb') as f:
      blob = f.read()
  return from_blob(kind, blob, spec)


def train_bpe(texts: Iterable[str], vocab_size: int) -> bytes:
  """A byte-level BPE of `vocab_size` ids trained on `texts`, as tokenizer.json bytes.

  GPT-2's layout: bytes mapped to printable characters, its pre-tokenizer regex, '<|endoftext|>'
  as the special token (id 0). Training is deterministic: the same texts give the same file.
  """
  import tokenizers as hf
  from tokenizers import decoders, models, pre_tokenizers, trainers

  tok = hf.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOD_NAMES[0]],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer)
  return tok.to_str().encode('utf-8')


def record(tok: Tokenizer) -> dict:
  """What a prepared dataset stores about its tokenizer (`from_record` reads it back)."""
  return {'spec': tok.spec, 'kind': tok.kind, 'file': FILE_NAMES.get(tok.kind),
          'vocab_size': tok.vocab_size, 'eod_id': tok.eod_id, 'fingerprint': tok.fingerprint}


def from_record(rec: dict, directory: str) -> Tokenizer:
  """The tokenizer a dataset's `record` describes, its model file read from `directory`."""
  blob = b''
  if rec['kind'] != 'byte':
    path = os.path.join(directory, rec['file'])
    if not os.path.isfile(path):
      raise UsageError(f'{path} is missing: the prepared dataset is incomplete; prepare it again.')
    with open(path, 'rb') as f:
      blob = f.read()
  tok = from_blob(rec['kind'], blob, rec['spec'])
  if tok.fingerprint != rec['fingerprint']:
    raise UsageError(f'the tokenizer in {directory} ({tok.fingerprint}) is not the one its '
                     f'dataset was tokenized with ({rec["fingerprint"]}): prepare it again.')
  return tok
