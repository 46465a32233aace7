r"""12-in-1 multi-task training (and its single-task, fine-tuning and CPU variants).

The paper's run, 12 tasks, official batch sizes and learning rates, on a TPU pod:

    twelve-in-one train --config configs/twelve_in_one.py:twelve_in_one \
        --workdir gs://BUCKET/12in1 --config.data.data_dir gs://BUCKET/tfds \
        --config.init.checkpoint gs://BUCKET/pretrained_model.bin

The CPU main job (generates the mini 12-in-1 with its caption corpus, prepares it, pretrains,
trains the twelve tasks, evaluates; about 11 min on 2 cores):

    twelve-in-one train --config configs/twelve_in_one.py:smoke --workdir /tmp/12in1_smoke

The paper's comparison in miniature: that multi-task run, from scratch and from the pretrained
model, against one single-task run per task, same budget per task:

    twelve-in-one study --config configs/twelve_in_one.py:smoke --workdir /tmp/12in1_study

One task alone, and fine-tuning one task from the multi-task model (as the official README):

    twelve-in-one train --config configs/twelve_in_one.py:single:refcoco --workdir DIR
    twelve-in-one train --config configs/twelve_in_one.py:finetune:refcoco --workdir DIR \
        --config.init.checkpoint multi_task_model.bin

A tiny synthetic-data run for tests (seconds on a laptop):

    twelve-in-one train --config configs/twelve_in_one.py:tiny --workdir /tmp/12in1_tiny

The accelerator variants (twelve_in_one, single, finetune) compute in bfloat16 with float32
parameters and optimizer state (`--config.model.dtype=float32` for float32 compute); smoke and
tiny, meant for CPU, compute in float32. Dropout keys come from `config.prng_impl="auto"`: a
fused counter hash on CPU, JAX's partitionable threefry on TPU and GPU (train/prng.py).

Any field can be overridden: `--config.tasks=vqa,gqa --config.task_settings.vqa.batch_size=32
--config.schedule.num_epochs=5 --config.mesh.axes.fsdp=16`. Unknown keys are errors. A mesh
preset (configs/mesh.py: dp, fsdp, fsdp_tp, dp_tp) is chosen after the variant:

    twelve-in-one train --config configs/twelve_in_one.py:twelve_in_one,mesh=fsdp_tp ...

`config.mesh.axes` are the axis sizes within one TPU slice and `config.mesh.dcn_axes` those
across slices (default: every slice on `data`); each mesh axis is their product. One slice
needs no change, and neither does a multi-slice job that replicates the model per slice; to
shard parameters across slices: `--config.mesh.dcn_axes.data=1 --config.mesh.dcn_axes.fsdp=-1`.
`--config.mesh.dcn_granule=process` treats each process as a slice (multi-node GPU). See
configs/mesh.py.
"""

import importlib.util
import os

from ml_collections import config_dict

from twelve_in_one.tasks import registry

# The paper's twelve tasks, in the round-robin's order. Every task's official settings
# (batch size, lr, text length, regions) are its registry entry's.
TWELVE = registry.TWELVE_TASKS


def _sibling_config(name):
  """The config module `configs/<name>.py` beside this one (configs are files, not a package)."""
  spec = importlib.util.spec_from_file_location(
      f"twelve_in_one_{name}_config", os.path.join(os.path.dirname(__file__), f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _mesh_module():
  return _sibling_config("mesh")


def _mesh_preset(name):
  return _mesh_module().preset(name)


def _pretraining(variant):
  """`configs/pretrain.py:<variant>`, the config of the run's pretraining phase."""
  return _sibling_config("pretrain").get_config(variant)


def _task_settings(names, shrink=None):
  """`config.task_settings`: each task's registry settings, then `shrink(task)`'s changes."""
  settings = config_dict.ConfigDict()
  for name in names:
    task = registry.TASKS[name]
    entry = dict(batch_size=task.batch_size, lr=task.lr, max_seq_length=task.max_seq_length,
                 max_region_num=task.max_region_num,
                 num_detected_regions=task.num_detected_regions, weight=1.0)
    if shrink:
      entry.update(shrink(task))
    settings[name] = entry
  return settings


def get_config(arg=None):
  """`arg` is `variant` or `variant:task` (single / finetune), optionally `,mesh=PRESET`."""
  spec, _, options = (arg or "twelve_in_one").partition(",")
  variant, _, task = spec.partition(":")
  mesh_preset = "fsdp"
  for option in filter(None, options.split(",")):
    key, _, value = option.partition("=")
    if key != "mesh" or not value:
      raise ValueError(f"config option {option!r}: expected mesh=PRESET")
    mesh_preset = value
  config = config_dict.ConfigDict()
  config.variant = variant
  config.seed = 0
  # The PRNG of the dropout keys (`twelve_in_one/train/prng.py`): "auto" is "counter_hash" on
  # CPU (a keyed hash of each element's index, fused into the dropout; identical across
  # shardings and backends) and JAX's partitionable "threefry2x32" on TPU and GPU; or name one:
  # "counter_hash", "rbg", "unsafe_rbg", "threefry2x32". Parameter init always uses threefry.
  config.prng_impl = "auto"

  # `vocab_size` 0 keeps the preset's (30522, bert-base-uncased, except `tiny`); `dropout`
  # -1 keeps the preset's (BERT's 0.1), otherwise it sets all four dropout probabilities;
  # `remat` recomputes layers in the backward pass: "all" (or True) every layer (a fraction
  # of the step's temporaries, for one more forward's compute), or a
  # comma-separated subset of "text", "visual", "coattention"; "none" keeps every activation
  # (see BENCHMARKS.md). A string, so that `--config.model.remat=coattention` parses.
  # `scan_layers` runs the encoder's layers as `nn.scan`s over stacked parameters
  # (models/scan.py): one compiled body per stack instead of one per layer, so each task's
  # step compiles faster and its executable is smaller. On in the accelerator variants; off in
  # the CPU ones (smoke, tiny), where the scanned step runs slower (BENCHMARKS.md).
  # Checkpoints and init checkpoints convert between the two layouts.
  # `dtype` is the compute dtype; parameters and optimizer state are float32 whatever it is.
  # The accelerator variants (twelve_in_one, single, finetune) set bfloat16 below; the CPU ones
  # (smoke, tiny) keep float32, since the CPU has no fast bfloat16.
  config.model = config_dict.ConfigDict(dict(
      name="base", dtype="float32", attention_impl="einsum", task_specific_tokens=True,
      vocab_size=0, dropout=-1.0, remat="none", scan_layers=False))

  config.tasks = ",".join(TWELVE)
  config.task_settings = _task_settings(TWELVE)

  # The official optimizer (train/optimizer.py): "adamw" (without bias correction) or
  # "radam". `unused_params`: what a task's step does to parameters its loss does not reach:
  # "torch1" steps every parameter some earlier step reached, with a zero gradient (the
  # released model's torch 1.x `zero_grad()`), "skip" leaves them (torch >= 2). `freeze` keeps
  # the text embeddings and text layers 0..freeze out of the optimizer (-1: none);
  # `vision_scratch` trains every weight that is not a BERT text weight at head_lr.
  config.optimizer = config_dict.ConfigDict(dict(
      name="adamw", base_lr=2e-5, head_lr=1e-4, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6,
      clip_grad_norm=0.0, grad_accum_steps=1, unused_params="torch1", freeze=-1,
      vision_scratch=False))
  # `lr_scheduler` (train/lr_schedule.py): "warmup_linear" (the README's command, which
  # trained the released model), "mannul" (the official script's default: x0.2 from epochs 5
  # and 7), "automatic", "cosine" or "cosine_warm". An epoch is the largest task's batches per
  # epoch times `train_iter_multiplier` (or `iterations_per_epoch` when > 0).
  config.schedule = config_dict.ConfigDict(dict(
      kind="round_robin", num_epochs=20, iterations_per_epoch=0, lr_scheduler="warmup_linear",
      warmup_proportion=0.1, train_iter_multiplier=1.0))
  # Dynamic Stop-and-Go. A stopped task still trains when iteration % train_iter_gap == 0.
  # `reset_epochs` is the official lr_reduce_list: the controllers are reset after these
  # epochs, and "mannul" lowers the learning rate from them on.
  config.dsg = config_dict.ConfigDict(dict(
      enabled=True, threshold=0.001, continue_threshold=0.005, patience=1, cooldown=1,
      train_iter_gap=4, reset_epochs=(5, 7)))

  config.data = config_dict.ConfigDict(dict(
      source="tfds", data_dir="", release_dir="", generate_if_missing=False, num_workers=0,
      vocab="", synthetic_train_examples=64, synthetic_eval_examples=16,
      synthetic_seq_len=0, synthetic_num_regions=0))

  config.mesh = config_dict.ConfigDict()
  sizes, rules = _mesh_preset(mesh_preset)
  config.mesh.axes = sizes                     # within a slice (ICI); one may be -1
  config.mesh.dcn_axes = dict(_mesh_module().DCN_AXES)   # across slices (DCN); one may be -1
  config.mesh.dcn_granule = "slice"            # or "process": what counts as a slice
  config.mesh.rules = rules

  config.init = config_dict.ConfigDict(dict(checkpoint="", bert="", ignore_unexpected=False))
  # The pretraining phase (train/pretraining_phase.py): with `enabled`, the run first pretrains
  # as `twelve-in-one pretrain` does with this config (configs/pretrain.py) in
  # <workdir>/pretrain, then trains the tasks from its export instead of config.init. On in the
  # smoke main job; the paper's variants start from the released pretrained_model.bin
  # (config.init.checkpoint) or a `twelve-in-one pretrain` run of their own. Its seed is
  # config.seed (one value: setting either sets both).
  config.pretraining = _pretraining("tiny" if variant == "tiny" else
                                    "smoke" if variant == "smoke" else "concap")
  config.pretraining.enabled = False
  config.pretraining.seed = config.get_ref("seed")
  config.checkpoint = config_dict.ConfigDict(dict(every_iterations=1000, keep=3,
                                                  asynchronous=True))
  config.log_every = 50
  # Threads compiling the tasks' steps ahead of the first iteration (more only pays with cores
  # to spare), and XLA's persistent cache, which makes a rerun or a resume start at once.
  config.compile_threads = 1
  config.compilation_cache_dir = "~/.cache/twelve_in_one/xla"
  config.eval_during_training = True
  # Validation batches per DSG evaluation during training (0: the whole split). The final
  # table always uses the whole split.
  config.eval_max_batches = 0
  config.distributed = config_dict.ConfigDict(dict(
      initialize="auto", coordinator_address="", num_processes=0, process_id=-1))

  if variant in ("twelve_in_one", "single", "finetune"):
    # The accelerator variants: bfloat16 compute, and scanned layers, whose one body per
    # stack is what keeps twelve tasks' compiles short on a TPU.
    config.model.dtype = "bfloat16"
    config.model.scan_layers = True
  if variant in ("single", "finetune"):
    if not task:
      raise ValueError(f"config variant {variant!r} needs a task, e.g. {variant}:refcoco")
    if task not in registry.TASKS:
      raise ValueError(f"config variant {variant}:{task}: unknown task; expected one of "
                       f"{sorted(registry.TASKS)}")
    config.tasks = task
    config.task_settings = _task_settings([task])
    if variant == "finetune":
      # The official README fine-tunes from multi_task_model.bin with task tokens on; the
      # checkpoint path must be given (--config.init.checkpoint).
      config.init.checkpoint = config_dict.placeholder(str)
  elif variant == "smoke":
    # The README's main job: the generated mini 12-in-1 (10 detected boxes per image, so 11
    # regions with the global one; Visual7W/GuessWhat add their <= 6 ground-truth boxes), a
    # small model, all twelve tasks with task tokens and DSG, on 2 CPU cores.
    config.model.name = "small"
    # No dropout: each example is seen only a few times in this budget, and dropout slowed the
    # fit (and each step) measurably; the QA tasks then stay at their answer priors.
    config.model.dropout = 0.0
    config.data.generate_if_missing = True
    config.schedule.num_epochs = 8
    config.schedule.iterations_per_epoch = 50
    config.schedule.warmup_proportion = 0.05
    config.optimizer.base_lr = 2e-4
    config.optimizer.head_lr = 5e-4
    config.dsg.reset_epochs = (2,)
    config.checkpoint.every_iterations = 50
    config.log_every = 10
    config.eval_max_batches = 8
    config.pretraining.enabled = True

    # Shapes fit the generated data, not the release's: text lengths the longest generated
    # text plus a margin (attention and the FFNs cost per token, and GuessWhat's 256 would
    # dominate the run), regions the generator's boxes; and any setting a task's generator
    # part changes for this run (GQA's batch and lr). See data/generate/parts.py.
    from twelve_in_one.data.generate import parts   # noqa: PLC0415 (only this variant)
    config.task_settings = _task_settings(
        TWELVE, lambda task: {"batch_size": 16, **parts.generated_task_settings(task.name)})
  elif variant == "tiny":
    config.model.name = "tiny"
    config.data.source = "synthetic"
    config.data.synthetic_train_examples = 8
    config.data.synthetic_eval_examples = 4
    config.data.synthetic_seq_len = 6
    config.data.synthetic_num_regions = 0
    config.schedule.num_epochs = 2
    config.checkpoint.every_iterations = 2
    config.log_every = 1
    # Pointing tasks keep as many ground-truth rows as detected ones, room for their
    # candidates (Visual7W's 4; GuessWhat's all but the empty pad row).
    config.task_settings = _task_settings(
        TWELVE, lambda task: dict(
            batch_size=8, max_seq_length=6, num_detected_regions=5,
            max_region_num=10 if task.head_spec.target == "pointing" else 5))
  elif variant != "twelve_in_one":
    raise ValueError(f"unknown config variant {variant!r}; expected twelve_in_one, "
                     "single:TASK, finetune:TASK, smoke or tiny")
  return config
