"""Data config fields (`config.data`), shared by every source."""

import ml_collections

KINDS = ('synthetic', 'text', 'tfds')


def default_data_config() -> ml_collections.ConfigDict:
  """All data fields with their defaults; `kind` selects the source, the others are ignored."""
  return ml_collections.ConfigDict(dict(
      kind='synthetic',  # synthetic | text | tfds
      # text / tfds without a validation split: validation is this last fraction of the stream.
      val_fraction=0.05,
      # text: local files, comma-separated paths or globs; UTF-8 bytes + end-of-document (257).
      path='',
      # tfds: a dataset prepared (file_format=array_record) in tfds_data_dir ('' = TFDS default),
      # 'name', 'name/config' or 'name:version'; read with tfds.data_source, no TensorFlow.
      tfds_name='', tfds_data_dir='', tfds_text_feature='text', tfds_train_split='train',
      tfds_val_split='validation',
      # synthetic: a hidden slow regime (switches with probability 1/regime_period per token)
      # selects which first-order Markov chain (Dirichlet(concentration) rows, fixed by
      # source_seed) emits the next token.
      vocab_size=64, num_regimes=4, regime_period=16, concentration=0.3, source_seed=1234,
      num_train_windows=20_000, num_val_windows=512,
  ))
