r"""ViLBERT pretraining on Conceptual Captions (`train_concap.py`), and its CPU variants.

The official run: the base model from bert-base-uncased, batch 512, 10 epochs, objective 1,
on the prepared Conceptual Captions corpus, on a TPU slice:

    twelve-in-one prepare --task conceptual_captions \
        --release_dir /data/conceptual_caption --data_dir gs://BUCKET/tfds
    twelve-in-one pretrain --config configs/pretrain.py:concap \
        --workdir gs://BUCKET/pretrain --config.data.data_dir gs://BUCKET/tfds \
        --config.init.bert gs://BUCKET/bert-base-uncased

The CPU smoke run (generates the mini 12-in-1 release with its caption corpus, prepares it,
pretrains the small model; a few minutes on 2 cores):

    twelve-in-one pretrain --config configs/pretrain.py:smoke --workdir /tmp/pretrain_smoke

A tiny run for tests (a small generated corpus, the tiny model; seconds):

    twelve-in-one pretrain --config configs/pretrain.py:tiny --workdir /tmp/pretrain_tiny

Each run ends with `<workdir>/pretrained`, the pretrained parameters, which a multi-task run
starts from and `convert` turns into the official `pretrained_model.bin`:

    twelve-in-one train --config configs/twelve_in_one.py:smoke --workdir /tmp/12in1 \
        --config.init.checkpoint /tmp/pretrain_smoke/pretrained
    twelve-in-one convert --direction export --format torch \
        --input /tmp/pretrain_smoke/pretrained --output /tmp/pretrained_bin

Rerunning a command resumes its run from the workdir's newest checkpoint; SIGTERM saves and
exits with status 143. Any field can be overridden (`--config.batch_size=256
--config.optimizer.lr=5e-5`); unknown keys are errors. A mesh preset (configs/mesh.py: dp,
fsdp, fsdp_tp, dp_tp) is chosen after the variant:

    twelve-in-one pretrain --config configs/pretrain.py:concap,mesh=fsdp_tp ...

The concap variant computes in bfloat16 with float32 parameters and optimizer state, with
scanned layers, as the accelerator variants of configs/twelve_in_one.py do; smoke and tiny,
meant for CPU, compute in float32.
"""

import importlib.util
import os

from ml_collections import config_dict

VARIANTS = ("concap", "smoke", "tiny")


def _mesh_module():
  spec = importlib.util.spec_from_file_location(
      "twelve_in_one_mesh_presets", os.path.join(os.path.dirname(__file__), "mesh.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  """`arg` is `variant`, optionally followed by `,mesh=PRESET`."""
  variant, _, options = (arg or "concap").partition(",")
  mesh_preset = "fsdp"
  for option in filter(None, options.split(",")):
    key, _, value = option.partition("=")
    if key != "mesh" or not value:
      raise ValueError(f"config option {option!r}: expected mesh=PRESET")
    mesh_preset = value
  if variant not in VARIANTS:
    raise ValueError(f"unknown config variant {variant!r}; expected one of {list(VARIANTS)}")
  mesh = _mesh_module()

  config = config_dict.ConfigDict()
  config.variant = variant
  config.seed = 0
  # The dropout keys' PRNG (twelve_in_one/train/prng.py): "auto", "counter_hash", "rbg",
  # "unsafe_rbg" or "threefry2x32".
  config.prng_impl = "auto"

  # `train_concap.py`'s settings. `objective`: 0 every label, 1 (the README's) no masking
  # losses on misaligned pairs, 2 no alignment loss and no random captions. `batch_size` is
  # the global batch (split over processes and data-parallel devices).
  config.objective = 1
  config.img_weight = 1.0
  config.batch_size = 512

  # The model as in configs/twelve_in_one.py (`vocab_size` 0 and `dropout` -1 keep the
  # preset's), without task tokens, which pretraining does not have.
  config.model = config_dict.ConfigDict(dict(
      name="base", dtype="bfloat16", attention_impl="einsum", vocab_size=0, dropout=-1.0,
      remat="none", scan_layers=True))

  # AdamW with bias correction (pretrain/optimizer.py). `bert_lr_scale` multiplies the lr of
  # the BERT text weights: 1.0 is what train_concap.py does, 0.1 what it meant to do (see
  # there). `grad_accum_steps` splits each batch into that many micro-batches.
  config.optimizer = config_dict.ConfigDict(dict(
      lr=1e-4, bert_lr_scale=1.0, weight_decay=0.01, b1=0.9, b2=0.98, eps=1e-8,
      clip_grad_norm=0.0, grad_accum_steps=1))
  # WarmupLinearSchedule over num_epochs epochs of `examples // batch_size` steps.
  config.schedule = config_dict.ConfigDict(dict(num_epochs=10, warmup_proportion=0.1))

  # The prepared corpus (`twelve-in-one prepare --task conceptual_captions`). Its shapes are
  # fixed when it is prepared; `max_seq_length` and `max_boxes` must agree with them (with
  # `generate_if_missing` they are what it is prepared with). `num_images`, `num_val_images`:
  # the generator's training and validation scenes per pool, when it generates. `val_split`
  # "" skips validation.
  config.data = config_dict.ConfigDict(dict(
      data_dir="", release_dir="", generate_if_missing=False, num_images=320,
      num_val_images=64, vocab="",
      train_split="train", val_split="val", max_seq_length=36, max_boxes=36, num_workers=0))

  config.mesh = config_dict.ConfigDict()
  sizes, rules = mesh.preset(mesh_preset)
  config.mesh.axes = sizes
  config.mesh.dcn_axes = dict(mesh.DCN_AXES)
  config.mesh.dcn_granule = "slice"
  config.mesh.rules = rules

  # `bert`: a HF BERT (model folder or weights file) for the text stream and masked-LM head,
  # as train_concap.py starts from bert-base-uncased (required by concap; "" trains from
  # scratch). `checkpoint`: an earlier pretraining's parameters to continue from.
  config.init = config_dict.ConfigDict(dict(bert="", checkpoint="", ignore_unexpected=False))
  config.checkpoint = config_dict.ConfigDict(dict(every_steps=1000, keep=3, asynchronous=True))
  config.log_every = 20
  # Validation batches per epoch-end pass (0: the whole split).
  config.eval_max_batches = 0
  config.compilation_cache_dir = "~/.cache/twelve_in_one/xla"
  config.distributed = config_dict.ConfigDict(dict(
      initialize="auto", coordinator_address="", num_processes=0, process_id=-1))

  if variant == "concap":
    config.init.bert = config_dict.placeholder(str)
  elif variant == "smoke":
    # The generated corpus: one caption per training scene of the three image pools (960
    # images), 10 detector boxes per image; captions fit the retrieval tasks' text length.
    from twelve_in_one.data.generate import parts
    from twelve_in_one.data.generate.layout import GeneratorConfig
    config.model.name = "small"
    config.model.dtype = "float32"
    config.model.scan_layers = False
    config.model.dropout = 0.0
    config.batch_size = 32
    # The official 1e-4. As the main job's pretraining phase, 1e-3 left the twelve tasks trained
    # from it far below their scores from scratch (docs/main_job.md).
    config.optimizer.lr = 1e-4
    config.schedule.num_epochs = 3
    config.data.generate_if_missing = True
    config.data.max_seq_length = parts.generated_task_settings("retrieval_coco")[
        "max_seq_length"]
    config.data.max_boxes = GeneratorConfig().num_regions
    config.checkpoint.every_steps = 30
    config.log_every = 10
  elif variant == "tiny":
    config.model.name = "tiny"
    config.model.dtype = "float32"
    config.model.scan_layers = False
    config.model.vocab_size = 30522
    config.batch_size = 8
    config.optimizer.lr = 1e-3
    config.schedule.num_epochs = 2
    config.data.generate_if_missing = True
    config.data.num_images = 16
    config.data.num_val_images = 8
    config.data.max_seq_length = 12
    config.data.max_boxes = 10
    config.checkpoint.every_steps = 2
    config.log_every = 1
  return config
