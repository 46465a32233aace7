"""The Conceptual Captions data path of ViLBERT pretraining (official `train_concap.py`).

    release corpus folder          training_feat_all.lmdb + caption_train.json (tensorpack LMDB)
      |  release.ConcapLMDB, read_captions        (writer.write_split writes the same files)
      v
    prepare.prepare_corpus         -> <data_dir>/conceptual_captions  (TFDS array_record)
      |
      v
    pipeline.pretraining_batches   -> grain batches, masked per (seed, epoch, record index)

Modules: `wire` (msgpack + msgpack_numpy bytes), `release` (reading the corpus), `writer`
(writing it), `regions` (box processing and the global region), `masking` (one masked
example), `prepared` (the prepared format, opening it), `prepare` (building it), `pipeline`
(grain batches).

Import the module you need (`from twelve_in_one.data.concap.writer import write_split`): the
release reader and writer load neither grain nor TFDS.
"""
