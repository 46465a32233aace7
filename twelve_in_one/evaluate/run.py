"""`evaluate(config, source, tasks, split)`: every task's official metric, predictions and files.

    results = evaluate(config, "/runs/12in1", tasks=["vqa", "refcoco"], split="val")

For each task and split (default: the task's official evaluation splits, `Task.eval_splits`):

* the official metric, computed with the trainer's mesh, parameter shardings, per-task step
  cache and eval-step math (`train/`), over one ordered pass with padding masked;
* retrieval tasks instead score every caption against every image of the split (or its first
  `retrieval_images`, 1000 by default as in the paper; 0 = all, e.g. COCO 5k) and report
  R@1/5/10, median and mean rank in both directions (`retrieval_metrics.py`);
* per-item predictions in `predictions/<task>_<split>.json` (and the score matrix of retrieval
  as `.npy`); VQA and GQA evaluation-server files in `submissions/`; the official scripts'
  `<split>_result.json` / `<split>_others.json` in `official/<task>/` (`official_format.py`);
* `results.json` and `results.md`: the paper-style table (`paper.py`) and every number.

Files go to `out_dir` (default `<workdir>/eval`, or `<checkpoint>-eval` beside a params
checkpoint); only process 0 writes them. The source and `out_dir` may be local or `gs://`
(`etils.epath`); each file appears whole (see `submission.write_file`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import tqdm

from twelve_in_one import paths
from twelve_in_one.evaluate import official_format, paper, retrieval_metrics, submission
from twelve_in_one.evaluate.scoring import (SplitScore, device_fields, item_records,
                                            make_prediction_step)
from twelve_in_one.evaluate.restore import LoadedModel, checkpoint_kind, load_model
from twelve_in_one.evaluate.sources import FirstImages, PreparedSource, SyntheticSource
from twelve_in_one.tasks.registry import Task, get_task
from twelve_in_one.train import sharding
from twelve_in_one.train.entry import generated_release_dir
from twelve_in_one.train.steps import StepCache
from twelve_in_one.train.validate import resolve_tasks, validate_config

TOP_IMAGES = 10   # images listed per caption in the retrieval predictions


def select_tasks(config, names: Sequence[str] | None) -> list[Task]:
  """The run's tasks (settings applied) named by `names`, or all of them."""
  run_tasks = resolve_tasks(config)
  if not names:
    return run_tasks
  by_name = {t.name: t for t in run_tasks}
  selected = []
  for name in names:
    key = get_task(name).name   # unknown names raise, listing the known ones
    if key not in by_name:
      raise ValueError(f"task {key!r} is not in config.tasks ({sorted(by_name)}); its batch "
                       "size and shapes come from the run config, so add it there")
    selected.append(by_name[key])
  return selected


def task_splits(task: Task, split: str | None) -> list[str]:
  """The splits to evaluate: the official ones, or `split` ("val" = the task's val split)."""
  if not split:
    return list(task.eval_splits)
  if split == "val":
    return [task.val_split]
  return [split]


def _data_paths(config, workdir: str | None) -> tuple[str, str]:
  """(data_dir, release_dir), defaulting as `train/entry.ensure_data` does for the smoke job."""
  data, generated = config.data, config.data.generate_if_missing and workdir
  data_dir = data.data_dir or (os.path.join(workdir, "prepared") if generated else "")
  release_dir = data.release_dir or (generated_release_dir(workdir) if generated else "")
  return data_dir, release_dir


def default_out_dir(source: str) -> str:
  """`<workdir>/eval` for a training run, `<checkpoint>-eval` beside a params checkpoint."""
  kind, directory, _ = checkpoint_kind(source)
  return os.path.join(directory, "eval") if kind == "workdir" else directory.rstrip("/") + "-eval"


def evaluate(config, source: str, tasks: Sequence[str] | None = None, split: str | None = None,
             *, out_dir: str | None = None, iteration: int | None = None,
             retrieval_images: int = 1000, caption_chunk: int = 8, image_chunk: int = 64,
             max_batches: int = 0, label2ans: Mapping[str, Sequence[str]] | None = None,
             progress: bool = True) -> dict[str, Any]:
  """Evaluates the model at `source` (a workdir or checkpoint) and writes the result files.

  Args:
    config: the run config (tasks and their settings, data, model, mesh).
    source: a training workdir, one of its `checkpoints/<iteration>`, or a params checkpoint.
    tasks: task names (default: every task of the run).
    split: one split for every task ("val" = each task's validation split); default: each
      task's official evaluation splits.
    out_dir: where the files go (see the module docstring).
    iteration: a workdir iteration to evaluate instead of the newest.
    retrieval_images: rank over the first N images of a retrieval split (0: all).
    caption_chunk, image_chunk: retrieval pairs per model call (captions × images).
    max_batches: evaluate only the first N batches of each split (0: all); for quick looks.
    label2ans: answer strings per task, overriding the release's vocabulary.
    progress: show progress bars.

  Returns:
    {"source", "iteration", "tasks": {task: {split: result}}, "table", "files"}.
  """
  started = time.perf_counter()
  paths.check_bucket(source, "evaluation source")
  paths.check_bucket(out_dir, "evaluation out_dir")
  selected = select_tasks(config, tasks)
  mesh = sharding.mesh_from_config(config.mesh)
  rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                for name, axes in config.mesh.rules)
  validate_config(config, selected, mesh)
  loaded = load_model(source, config, mesh=mesh, rules=rules, iteration=iteration)
  kind, directory, _ = checkpoint_kind(source)
  out_dir = out_dir or default_out_dir(source)
  is_chief = jax.process_index() == 0
  if config.data.source == "synthetic":
    data = SyntheticSource(config, loaded.config, process_index=jax.process_index(),
                           process_count=jax.process_count())
  else:
    data_dir, release_dir = _data_paths(config, directory if kind == "workdir" else None)
    data = PreparedSource(data_dir, release_dir, seed=config.seed,
                          process_index=jax.process_index(), process_count=jax.process_count())

  param_shardings = jax.tree.map(lambda leaf: leaf.sharding, loaded.params)
  steps = StepCache(lambda task: make_prediction_step(loaded.model.apply, task, rules),
                    in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                    out_shardings=sharding.replicated(mesh))
  results: dict[str, dict[str, Any]] = {}
  files: dict[str, list[str]] = {}
  with jax.set_mesh(mesh):
    for task in selected:
      vocab = _vocabulary(task, data, loaded, label2ans)
      for split_name in task_splits(task, split):
        if task.process == "retrieval":
          result, records, extra = _rank_split(task, split_name, data, loaded, mesh, rules,
                                               retrieval_images, caption_chunk, image_chunk,
                                               progress)
        else:
          result, records = _score_split(task, split_name, data, steps(task), loaded.params,
                                         mesh, vocab, max_batches, progress)
          extra = None
        results.setdefault(task.name, {})[split_name] = result
        if is_chief:
          written = files.setdefault(task.name, [])
          written.append(submission.write_predictions(task, split_name, records, out_dir))
          if extra is not None:
            path = os.path.join(out_dir, "predictions", f"{task.name}_{split_name}_scores.npy")
            written.append(submission.write_file(path, lambda f, m=extra: np.save(f, m),
                                                 mode="wb"))
          result_path, others_path = official_format.official_paths(task, split_name, out_dir)
          written.append(submission.write_json(
              result_path, official_format.official_results(task, records, extra)))
          written.append(submission.write_json(others_path, []))
          if vocab is not None:
            server = submission.write_server_file(task, split_name, records, out_dir)
            if server:
              written.append(server)

  markdown, table = paper.paper_table(results)
  summary = {"source": loaded.source, "iteration": loaded.iteration,
             "model": {"hidden_size": loaded.config.hidden_size,
                       "v_hidden_size": loaded.config.v_hidden_size},
             "tasks": results, "paper": table, "files": files,
             "seconds": round(time.perf_counter() - started, 1), "out_dir": out_dir}
  if is_chief:
    header = (f"Evaluation of `{loaded.source}`"
              + (f" (iteration {loaded.iteration})" if loaded.iteration is not None else "")
              + "\n\n")
    submission.write_file(os.path.join(out_dir, "results.md"),
                          lambda f: f.write(header + markdown))
    submission.write_json(os.path.join(out_dir, "results.json"), summary)
  summary["table"] = markdown
  return summary


def _vocabulary(task: Task, data, loaded: LoadedModel,
                overrides: Mapping[str, Sequence[str]] | None) -> list[str] | None:
  """The answer strings of a classifier task, checked against the model's answer head."""
  vocab = overrides.get(task.name) if overrides else None
  vocab = list(vocab) if vocab is not None else data.label2ans(task)
  if vocab is None:
    return None
  field = task.head_spec.answer_head
  size = getattr(loaded.config, field) if field else None
  if size is not None and len(vocab) != size:
    raise ValueError(f"task {task.name}: the answer vocabulary has {len(vocab)} answers but "
                     f"the model's answer head has {size}")
  return vocab


def _score_split(task: Task, split: str, data, step, params, mesh, vocab, max_batches: int,
                 progress: bool) -> tuple[dict[str, Any], list[dict]]:
  """One ordered pass over a split: the official metric and the per-item records."""
  batches, total = data.batches(task, split)
  partial = bool(max_batches) and max_batches < total
  count = min(total, max_batches) if max_batches else total
  score, records = SplitScore(), []
  bar = tqdm.tqdm(total=count, disable=not progress or jax.process_index() != 0,
                  desc=f"{task.name}/{split}", unit="batch", dynamic_ncols=True)
  with bar:
    for index, batch in enumerate(batches):
      if max_batches and index >= max_batches:
        break
      rows = batch["input_ids"].shape[0]
      # Batches without official ids (synthetic data) are numbered by global position.
      fields = device_fields(batch, index * rows * jax.process_count()
                             + jax.process_index() * rows)
      result = jax.device_get(step(params, sharding.global_batch(fields, mesh)))
      result = {k: np.asarray(v) for k, v in result.items()}
      score.add(result)
      records.extend(item_records(task, result, vocab))
      bar.update(1)
  if hasattr(batches, "close"):
    batches.close()
  summary = score.summary()
  summary["metric"] = task.metric
  if partial:   # a quick look; its files are not complete submissions
    summary["partial"] = f"first {max_batches} of {total} batches only"
  return summary, records


def _rank_split(task: Task, split: str, data, loaded: LoadedModel, mesh, rules,
                retrieval_images: int, caption_chunk: int, image_chunk: int, progress: bool
                ) -> tuple[dict[str, Any], list[dict], np.ndarray]:
  """Every caption against every image: rank metrics, per-caption records, score matrix."""
  ranking = data.ranking(task, split)
  keep, used = retrieval_metrics.limit_images(ranking.caption_image, len(ranking.images),
                                      retrieval_images)
  captions = {k: v[keep] for k, v in ranking.captions.items()}
  caption_image = ranking.caption_image[keep]
  scores = retrieval_metrics.score_matrix(
      loaded.model.apply, loaded.params, task, captions, FirstImages(ranking.images, used),
      mesh=mesh, rules=rules, caption_chunk=caption_chunk, image_chunk=image_chunk,
      progress=progress and jax.process_index() == 0)
  metrics = retrieval_metrics.rank_metrics(scores, caption_image)
  ranks = retrieval_metrics.image_ranks(scores, caption_image)
  # Stable argsort of the negated scores: equal scores keep image order.
  top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_IMAGES]
  records = [{"caption_id": int(cid), "image_index": int(gt), "rank": int(rank),
              "top_images": [int(i) for i in row]}
             for cid, gt, rank, row in zip(ranking.caption_ids[keep], caption_image, ranks, top)]
  result = {"metric": "image retrieval R@1", "retrieval": metrics, "examples": len(keep),
            "images": used, "score": metrics["image_retrieval"]["R@1"] / 100.0}
  if used < retrieval_images:
    result["note"] = (f"the split has {used} images, fewer than the {retrieval_images} asked "
                      "for; ranked over all of them")
  return result, records, scores


def load_results(out_dir: str) -> dict[str, Any]:
  """The `results.json` an earlier `evaluate` wrote into `out_dir`."""
  path = paths.as_path(out_dir) / "results.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no evaluation results here (run `twelve-in-one eval`)")
  return json.loads(path.read_text())
