"""The documents of a corpus to prepare: local text files or a TFDS dataset, streamed.

Local files (`--input`, plain or .gz), one document per
  file       the whole file (empty files skipped),
  paragraph  run of text between blank lines (whitespace-only paragraphs skipped),
  line       non-blank line,
and JSON lines (`*.jsonl`, `*.jsonl.gz`, whatever the mode): the string `field` of each line.

Documents are UTF-8 bytes, delivered as pieces `(bytes, ends_document)` of at most PIECE_BYTES:
a longer document is cut after its last newline within the limit (at a character boundary when
it has none), so no process ever holds a huge text, and every piece is tokenized on its own. The
cuts depend on the document's content alone, so the pieces are the same on every run.

Train / validation: a TFDS dataset's own validation split when it has one; otherwise
`holdout(n, val_fraction)` documents, evenly spaced over the input order, go to validation.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator

from fastslow_jax.data import text
from fastslow_jax.errors import UsageError

MODES = ('file', 'paragraph', 'line')
PIECE_BYTES = 1 << 20  # The most text one piece (one tokenizer call) holds.
BLOCK_BYTES = 1 << 22  # Files are read in blocks of this size.
_SEPARATORS = {'paragraph': re.compile(rb'\n(?:[ \t\r\f\v]*\n)+'), 'line': re.compile(rb'\n')}
_FINAL_NEWLINES = re.compile(rb'\n\s*\Z')
_JSONL = ('.jsonl', '.jsonl.gz')

Piece = tuple[bytes, bool]


def holdout(n: int, val_fraction: float) -> int:
  """How many of `n` documents validation gets: round(n * val_fraction), at least 1."""
  return max(1, round(n * val_fraction))


def is_validation(i: int, n: int, num_val: int) -> bool:
  """Whether document i of n is one of the `num_val` evenly spaced validation documents."""
  return (i + 1) * num_val // n > i * num_val // n


def _cut(buf: bytes) -> int:
  """Where the first piece of an over-long document ends: after a newline in its second half,
  else at PIECE_BYTES moved back to a UTF-8 character boundary."""
  newline = buf.rfind(b'\n', PIECE_BYTES // 2, PIECE_BYTES)
  if newline >= 0:
    return newline + 1
  end = PIECE_BYTES
  while end > PIECE_BYTES - 4 and (buf[end] & 0xC0) == 0x80:  # A continuation byte.
    end -= 1
  return end


def pieces(fragments: Iterator[Piece]) -> Iterator[Piece]:
  """Fragments of documents (any cuts) -> canonical pieces of at most PIECE_BYTES."""
  buf = b''
  for fragment, ends in fragments:
    buf += fragment
    while len(buf) > PIECE_BYTES:
      cut = _cut(buf)
      yield buf[:cut], False
      buf = buf[cut:]
    if ends:
      yield buf, True
      buf = b''


class TextFiles:
  """Documents of local files, in path order (`--input`)."""

  split = None  # Train and validation are held out from the same documents.

  def __init__(self, spec: str, mode: str, field: str):
    if mode not in MODES:
      raise UsageError(f'--documents={mode!r} is unknown: choose one of {", ".join(MODES)}.')
    self.paths, self.mode, self.field = text.resolve_paths(spec, '--input'), mode, field
    self.bytes = sum(os.path.getsize(p) for p in self.paths)

  def describe(self) -> dict:
    """What identifies the input (a changed file refuses a resume)."""
    files = [[p, os.path.getsize(p), os.stat(p).st_mtime_ns] for p in self.paths]
    return {'input': files, 'documents': self.mode, 'jsonl_field': self.field}

  def count(self, advance=lambda nbytes: None) -> int:
    """The number of documents; reads (and so checks) every file, calling advance(bytes read)."""
    if self.mode == 'file' and not any(p.endswith(('.gz', '.jsonl')) for p in self.paths):
      advance(self.bytes)
      return sum(os.path.getsize(p) > 0 for p in self.paths)
    return sum(ends for _, ends in self._fragments(advance))

  def pieces(self) -> Iterator[Piece]:
    return pieces(self._fragments())

  def _fragments(self, advance=None) -> Iterator[Piece]:
    for path in self.paths:
      blocks = _blocks(path, advance)
      if path.endswith(_JSONL):
        yield from self._jsonl(path, blocks)
      elif self.mode == 'file':
        yield from _whole(blocks)
      else:
        yield from self._separated(blocks, _SEPARATORS[self.mode], long_ok=True)

  @staticmethod
  def _separated(blocks: Iterator[bytes], separator: re.Pattern, long_ok: bool
                 ) -> Iterator[Piece]:
    """Documents between separator matches. A match touching the end of what has been read may
    grow with the next block, so it is matched again then; a document growing past two pieces
    is passed on in fragments (keeping a tail that could hold the start of a separator)."""
    carry, open_doc = b'', False  # open_doc: part of the current document was passed on.
    for block in blocks:
      buf, start = carry + block, 0
      for m in separator.finditer(buf):
        if m.end() == len(buf):
          break
        if open_doc or buf[start:m.start()].strip():
          yield buf[start:m.start()], True
        start, open_doc = m.end(), False
      carry = buf[start:]
      if long_ok and len(carry) > 2 * PIECE_BYTES:
        yield carry[:-PIECE_BYTES], False
        carry, open_doc = carry[-PIECE_BYTES:], True
    ending = _FINAL_NEWLINES.search(carry)
    if ending:  # The file's final newline(s) end its last document.
      carry = carry[:ending.start()]
    if open_doc or carry.strip():
      yield carry, True

  def _jsonl(self, path: str, blocks: Iterator[bytes]) -> Iterator[Piece]:
    lines = self._separated(blocks, _SEPARATORS['line'], long_ok=False)
    for number, (line, _) in enumerate(lines, 1):  # Records: the non-blank lines.
      try:
        doc = json.loads(line)[self.field]
      except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f'{path} record {number} has no string field --jsonl_field='
                         f'{self.field!r} ({type(e).__name__}): fix the file or the field.'
                         ) from None
      if not isinstance(doc, str):
        raise UsageError(f'{path} record {number}: --jsonl_field={self.field!r} is a '
                         f'{type(doc).__name__}, not a string: name a text field.')
      if doc:
        yield doc.encode('utf-8', 'replace'), True


def _blocks(path: str, advance=None) -> Iterator[bytes]:
  """The file's bytes (decompressed for .gz) in blocks; advance(file bytes read) after each."""
  try:
    with open(path, 'rb') as raw:
      f, done = gzip.GzipFile(fileobj=raw) if path.endswith('.gz') else raw, 0
      while block := f.read(BLOCK_BYTES):
        if advance:
          advance(raw.tell() - done)
          done = raw.tell()
        yield block
  except (OSError, EOFError) as e:  # Unreadable, or a damaged .gz.
    raise UsageError(f'--input file {path} cannot be read ({type(e).__name__}: {e}): fix or '
                     'remove it.') from None


def _whole(blocks: Iterator[bytes]) -> Iterator[Piece]:
  """A whole file as one document (none when it is empty)."""
  seen = False
  for block in blocks:
    seen = True
    yield block, False
  if seen:
    yield b'', True


class TfdsSplit:
  """The documents of one split of a TFDS dataset (array_record), in record order."""

  def __init__(self, builder, cfg, name: str, split: str | None):
    self.cfg, self.name, self.split = cfg, name, split
    self.source = text.tfds_source(builder, cfg, name)
    self.bytes = None  # Unknown without reading.

  def describe(self) -> dict:
    keys = ('tfds_name', 'tfds_data_dir', 'tfds_text_feature')
    return {**{k: self.cfg[k] for k in keys}, 'split': self.name}

  def count(self, advance=None) -> int:
    del advance  # Nothing to read.
    next(text.tfds_documents(self.source, self.cfg), None)  # Checks the text feature.
    return len(self.source)

  def pieces(self) -> Iterator[Piece]:
    # Every record is a document, even an empty one, so that count() is len(source).
    return pieces((d.encode('utf-8') if isinstance(d, str) else bytes(d), True)
                  for d in text.tfds_documents(self.source, self.cfg))


def tfds_inputs(cfg) -> list[TfdsSplit]:
  """The train split (split None: validation held out of it) or train and validation."""
  builder, train, val = text.tfds_splits(cfg)
  if val is None:
    return [TfdsSplit(builder, cfg, train, None)]
  return [TfdsSplit(builder, cfg, train, 'train'), TfdsSplit(builder, cfg, val, 'validation')]
