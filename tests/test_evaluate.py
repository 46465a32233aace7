"""Evaluation: rank metrics, decoding, server files, the paper table, evaluate(), predict,
pictures and training curves. Tiny model, synthetic or hand-made inputs (about a minute)."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from run_configs import tiny_run_config
from twelve_in_one.data.errors import DataError
from twelve_in_one.data.features import build_image_features, pad_regions, write_feature_lmdb
from twelve_in_one.evaluate import paper, plot, retrieval_metrics, scoring, submission
from twelve_in_one.evaluate.predict import TextTooLong, load_features, predict
from twelve_in_one.evaluate.run import evaluate
from twelve_in_one.evaluate.visualize import (FIGURE_SIZE, FIGURE_SIZE_NO_ATTENTION,
                                              region_heat, visualize)
from twelve_in_one.models import ViLBertForVLTasks, init_params, tiny_config
from twelve_in_one.tasks import get_task
from twelve_in_one.train import sharding
from twelve_in_one.train.checkpoint import Checkpointer
from twelve_in_one.train.steps import create_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny():
  """The tiny model of the `tiny` run config (vocabulary 1000) and its initial parameters."""
  config = tiny_config()
  return config, init_params(ViLBertForVLTasks(config), jax.random.key(0))


class WordTokenizer:
  """Whitespace words -> ids below the tiny vocabulary, in the official [CLS] ... [SEP] layout."""

  def tokenize(self, text):
    return text.lower().split()

  def encode(self, text, max_seq_length):
    pieces = self.tokenize(text)[:max_seq_length - 2]
    ids = np.zeros((max_seq_length,), np.int32)
    ids[:len(pieces) + 2] = [101] + [200 + sum(map(ord, p)) % 700 for p in pieces] + [102]
    mask = (ids > 0).astype(np.int32)
    return ids, mask, np.zeros_like(ids)


def _image(image_id="7", boxes=((10, 10, 50, 40), (60, 20, 90, 70), (5, 50, 40, 78)),
           width=100, height=80, seed=0):
  features = np.random.default_rng(seed).random((len(boxes), 2048), dtype=np.float32)
  return build_image_features(image_id, features, np.asarray(boxes, np.float32), height, width,
                              source="<test>")


# ------------------------------------------------------------------ rank metrics


SCORES = np.array([[0.9, 0.1, 0.5],    # caption 0 (image 0): rank 1
                   [0.5, 0.5, 0.2],    # caption 1 (image 0): tie with image 1 -> rank 2
                   [0.9, 0.2, 0.8],    # caption 2 (image 1): two images above -> rank 3
                   [0.1, 0.7, 0.7],    # caption 3 (image 1): tie -> rank 2
                   [0.4, 0.4, 0.4],    # caption 4 (image 2): all tie -> rank 3
                   [0.0, 0.1, 0.6]])   # caption 5 (image 2): rank 1
CAPTION_IMAGE = np.array([0, 0, 1, 1, 2, 2])


def test_rank_metrics_by_hand_with_pessimistic_ties():
  np.testing.assert_array_equal(retrieval_metrics.image_ranks(SCORES, CAPTION_IMAGE), [1, 2, 3, 2, 3, 1])
  # Image 0: best caption 0.9 (caption 0) ties with caption 2 of image 1 -> rank 2.
  # Image 1: best caption 0.7 (caption 3), no other caption reaches it -> rank 1.
  # Image 2: best caption 0.6 (caption 5); captions 2 (0.8) and 3 (0.7) are above -> rank 3.
  np.testing.assert_array_equal(retrieval_metrics.text_ranks(SCORES, CAPTION_IMAGE), [2, 1, 3])
  result = retrieval_metrics.rank_metrics(SCORES, CAPTION_IMAGE)
  assert result["image_retrieval"] == {"R@1": pytest.approx(100 / 3), "R@5": 100.0,
                                       "R@10": 100.0, "median_rank": 2.0, "mean_rank": 2.0}
  assert result["text_retrieval"]["R@1"] == pytest.approx(100 / 3)
  assert result["text_retrieval"]["median_rank"] == 2.0
  # A constant matrix is the worst case, not a lucky one.
  flat = np.zeros((6, 3))
  np.testing.assert_array_equal(retrieval_metrics.image_ranks(flat, CAPTION_IMAGE), [3] * 6)
  np.testing.assert_array_equal(retrieval_metrics.text_ranks(flat, CAPTION_IMAGE), [5, 5, 5])


def test_rank_errors_and_image_limit():
  broken = SCORES.copy()
  broken[1, 2] = broken[4, 0] = np.nan
  with pytest.raises(ValueError, match=r"2 non-finite entries, the first at \(caption, image\) "
                                       r"= \(1, 2\)"):
    retrieval_metrics.image_ranks(broken, CAPTION_IMAGE)
  with pytest.raises(ValueError, match=r"image\(s\) \[2\] have no caption"):
    retrieval_metrics.text_ranks(SCORES, np.array([0, 0, 1, 1, 1, 1]))
  with pytest.raises(ValueError, match="does not match 5 caption"):
    retrieval_metrics.image_ranks(SCORES, CAPTION_IMAGE[:5])
  keep, used = retrieval_metrics.limit_images(CAPTION_IMAGE, 3, 2)
  np.testing.assert_array_equal(keep, [0, 1, 2, 3])
  assert used == 2
  assert retrieval_metrics.limit_images(CAPTION_IMAGE, 3, 0)[1] == 3
  assert retrieval_metrics.limit_images(CAPTION_IMAGE, 3, 5000)[1] == 3


# ------------------------------------------------------------------ decoding and scores


def test_decode_records_and_split_score_by_hand():
  refcoco = get_task("refcoco")
  logits = jnp.array([[[0.0], [3.0], [1.0]], [[2.0], [0.0], [-10000.0]]])
  loc = jnp.array([[[0, 0, 1, 1, 1], [.1, .2, .3, .4, 0], [.5, .5, .9, .9, 0]]] * 2)
  target = jnp.array([[[0.0], [0.7], [0.2]], [[0.4], [0.9], [0.0]]])
  decoded = scoring.decode(refcoco, {"vision_logit": logits},
                           {"image_loc": loc, "target": target})
  np.testing.assert_array_equal(decoded["region"], [1, 0])
  np.testing.assert_allclose(decoded["box"], [[.1, .2, .3, .4], [0, 0, 1, 1]])
  np.testing.assert_allclose(decoded["iou"], [0.7, 0.4])

  visual7w = dataclasses.replace(get_task("visual7w"), num_detected_regions=2)
  logits = jnp.array([[[9.0], [9.0], [1.0], [4.0], [2.0]]])
  decoded = scoring.decode(visual7w, {"vision_logit": logits},
                           {"multiple_choice_ids": jnp.array([[2, 0]]),
                            "image_loc": jnp.tile(jnp.arange(5.0)[None, :, None], (1, 1, 5))})
  # Candidates are regions 2 + [2, 0] = 4 and 2 with logits 2 and 1: choice 0, region 4.
  assert int(decoded["choice"][0]) == 0 and int(decoded["region"][0]) == 4
  np.testing.assert_allclose(decoded["box"], [[4, 4, 4, 4]])

  high, low = scoring.split_ids(np.array([3, 2**40 + 5, 201307251]))
  np.testing.assert_array_equal(scoring.join_ids(high, low), [3, 2**40 + 5, 201307251])

  vqa = get_task("vqa")
  result = {"example_id_high": high, "example_id_low": low, "example_mask": np.array([1, 1, 0]),
            "label": np.array([2, 0, 1]), "labelled": np.array([1, 0, 1]),
            "scores": np.array([0.6, 0.0, 1.0]), "loss": np.float32(1.5)}
  records = scoring.item_records(vqa, result, ["yes", "no", "two"])
  assert records == [{"question_id": 3, "label": 2, "answer": "two", "score": 0.6},
                     {"question_id": 2**40 + 5, "label": 0, "answer": "yes"}]
  score = scoring.SplitScore()
  score.add(result)
  assert score.summary() == {"score": pytest.approx(0.3), "examples": 2, "labelled": 1,
                             "loss": 1.5}
  unlabelled = scoring.SplitScore()
  unlabelled.add(dict(result, labelled=np.zeros(3)))
  assert unlabelled.summary()["score"] is None


# ------------------------------------------------------------------ server files and table


def test_server_files_are_valid_and_bad_ones_are_named(tmp_path):
  vqa, gqa = get_task("vqa"), get_task("gqa")
  records = [{"question_id": 5, "label": 1, "answer": "yes"},
             {"question_id": 201307251, "label": 0, "answer": "no", "score": 1.0}]
  path = submission.write_server_file(vqa, "test", records, str(tmp_path))
  content = json.loads(open(path).read())
  assert content == [{"question_id": 5, "answer": "yes"},
                     {"question_id": 201307251, "answer": "no"}]
  submission.validate_vqa(content)
  path = submission.write_server_file(gqa, "test", records, str(tmp_path))
  content = json.loads(open(path).read())
  assert content[1] == {"questionId": "201307251", "prediction": "no"}
  submission.validate_gqa(content)
  assert submission.write_server_file(get_task("genome_qa"), "val", records,
                                      str(tmp_path)) is None

  bad_vqa = [([{"question_id": "5", "answer": "yes"}], r"entry 0: field 'question_id' is str"),
             ([{"question_id": True, "answer": "yes"}], r"entry 0: field 'question_id' is bool"),
             ([{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}],
              r"entry 1: question_id 1 already in entry 0"),
             ([{"question_id": 1}], r"entry 0: has fields \['question_id'\]"),
             ({"question_id": 1, "answer": "a"}, "expected a JSON list")]
  for entries, message in bad_vqa:
    with pytest.raises(ValueError, match=message):
      submission.validate_vqa(entries)
  with pytest.raises(ValueError, match=r"entry 0: field 'questionId' is int"):
    submission.validate_gqa([{"questionId": 1, "prediction": "no"}])
  with pytest.raises(ValueError, match=r"entry 0: field 'prediction' is empty"):
    submission.validate_gqa([{"questionId": "1", "prediction": ""}])
  with pytest.raises(ValueError, match="question 5 has no answer string"):
    submission.server_entries(vqa, [{"question_id": 5, "label": 1}])


def test_paper_table_marks_confirmed_numbers_and_server_splits():
  results = {"vqa": {"test": {"score": None}, "minval": {"score": 0.5}},
             "retrieval_flickr30k": {"test": {"score": 0.25, "retrieval": {
                 "image_retrieval": {"R@1": 25.0}}}}}
  markdown, data = paper.paper_table(results)
  assert "| vqa | VQA accuracy | test-dev | 71.82 * | 72.57 * | 73.15 ✓ | test server · " \
         "minval 50.00 |" in markdown
  assert "67.90 ✓ | test 25.00 |" in markdown
  assert data["tasks"]["vqa"]["paper"]["AT_FT"] == {"value": 73.15, "source": "3p",
                                                    "confirmed": True}
  assert not data["tasks"]["vqa"]["paper"]["AT"]["confirmed"]
  assert data["tasks"]["retrieval_flickr30k"]["ours_on_paper_split"] == 25.0
  assert set(paper.PAPER) == set(tiny_run_config("vqa").task_settings)   # all twelve tasks


# ------------------------------------------------------------------ model paths


def test_score_matrix_equals_one_model_call_per_pair(tiny):
  config, params = tiny
  model = ViLBertForVLTasks(config)
  task = get_task("retrieval_flickr30k")
  rng = np.random.default_rng(1)
  ids = rng.integers(200, 1000, (3, 6)).astype(np.int32)
  captions = {"input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": 0 * ids}
  images = [{"image_feat": rng.random((4, 2048), dtype=np.float32),
             "image_loc": np.tile(np.float32([[0, 0, 1, 1, 1]]), (4, 1)),
             "image_mask": np.array([1, 1, 1, 0], np.int32)} for _ in range(5)]
  mesh = sharding.make_mesh({"fsdp": -1})
  scores = retrieval_metrics.score_matrix(model.apply, params, task, captions, images, mesh=mesh,
                                  caption_chunk=2, image_chunk=3, progress=False)
  pairs = {k: np.repeat(v, 5, axis=0) for k, v in captions.items()}
  pairs.update({k: np.stack([im[k] for im in images] * 3) for k in retrieval_metrics.IMAGE_KEYS})
  direct = jax.jit(lambda p, b: model.apply({"params": p}, **b, task_ids=task.task_id,
                                            outputs=("vil_logit",))["vil_logit"])(params, pairs)
  np.testing.assert_allclose(scores, np.asarray(direct).reshape(3, 5), rtol=1e-5, atol=1e-5)


def test_evaluate_writes_metrics_predictions_and_server_files(tiny, tmp_path):
  config, params = tiny
  run_config = tiny_run_config("vqa,refcoco,retrieval_flickr30k")
  checkpointer = Checkpointer(str(tmp_path), asynchronous=False)
  checkpointer.save(5, create_state(params), {"iteration": 5}, wait=True)
  checkpointer.close()
  vocab = {"vqa": [f"answer {i}" for i in range(config.num_vqa_answers)]}
  result = evaluate(run_config, str(tmp_path), split="val", label2ans=vocab, caption_chunk=4,
                    image_chunk=2, progress=False)
  out = tmp_path / "eval"
  assert result["iteration"] == 5 and result["out_dir"] == str(out)
  assert set(result["tasks"]) == {"vqa", "refcoco", "retrieval_flickr30k"}
  for name, split in (("vqa", "minval"), ("refcoco", "val")):
    entry = result["tasks"][name][split]
    assert entry["examples"] == run_config.data.synthetic_eval_examples
    records = json.loads((out / "predictions" / f"{name}_{split}.json").read_text())
    assert len(records) == entry["examples"]
    if name == "refcoco":   # the official metric is the mean of the per-item outcomes
      assert entry["score"] == pytest.approx(np.mean([r["correct"] for r in records]))
  server = json.loads((out / "submissions/vqa_vqa_minval.json").read_text())
  submission.validate_vqa(server)
  assert [e["answer"] for e in server] == [
      r["answer"] for r in json.loads((out / "predictions/vqa_minval.json").read_text())]
  ranked = result["tasks"]["retrieval_flickr30k"]["val"]
  assert ranked["retrieval"]["num_captions"] == 20 and ranked["images"] == 4
  assert np.load(out / "predictions" / "retrieval_flickr30k_val_scores.npy").shape == (20, 4)
  # The official scripts' files, entry for entry the same predictions.
  official = out / "official"
  vqa_official = json.loads((official / "vqa/minval_result.json").read_text())
  assert vqa_official == server
  grounding = json.loads((official / "refcoco/val_result.json").read_text())
  refcoco_records = json.loads((out / "predictions/refcoco_val.json").read_text())
  assert [(e["id"], e["target"], e["IOU"]) for e in grounding] == [
      (r["id"], r["region"], r["iou"]) for r in refcoco_records]
  top = json.loads((official / "retrieval_flickr30k/val_result.json").read_text())
  scores = np.load(out / "predictions" / "retrieval_flickr30k_val_scores.npy")
  assert [row[0] for row in top] == np.argmax(scores, axis=1).tolist()
  assert len(top) == 20 and all(len(row) == 4 for row in top)
  assert json.loads((official / "refcoco/val_others.json").read_text()) == []
  table = (out / "results.md").read_text()
  assert "| refcoco | accuracy (IoU > 0.5) |" in table
  assert json.loads((out / "results.json").read_text())["tasks"]["vqa"]["minval"]["labelled"] > 0
  with pytest.raises(ValueError, match="task 'nlvr2' is not in config.tasks"):
    evaluate(run_config, str(tmp_path), ["nlvr2"])


def test_predict_answers_boxes_scores_labels_and_errors(tiny, tmp_path):
  config, params = tiny
  tokenizer = WordTokenizer()
  image = _image()
  # "Train" the VQA head trivially: answer 42 wins by a wide margin.
  biased = jax.tree.map(lambda x: x, params)
  head = dict(biased["vil_prediction"])
  head["logit_fc_3"] = dict(head["logit_fc_3"],
                            bias=np.asarray(head["logit_fc_3"]["bias"]).copy())
  head["logit_fc_3"]["bias"][42] += 50.0
  biased = dict(biased, vil_prediction=head)
  vocab = [f"answer {i}" for i in range(config.num_vqa_answers)]
  qa = predict(biased, config, "vqa", image, "what is it", tokenizer=tokenizer, label2ans=vocab,
               top_k=3, attention=True)
  assert qa.result["answer"] == "answer 42" and len(qa.result["answers"]) == 3
  assert qa.result["answers"][0]["probability"] > 0.99
  assert qa.tokens == ["[CLS]", "<TASK1>", "what", "is", "it", "[SEP]"]
  assert qa.attention.shape == (6, get_task("vqa").max_region_num)
  np.testing.assert_allclose(qa.attention.sum(axis=1), 1.0, rtol=1e-5)

  # Grounding: the chosen region is the argmax of a direct model call on the same inputs.
  refcoco = get_task("refcoco")
  ground = predict(params, config, refcoco, image, "the left box", tokenizer=tokenizer, top_k=4)
  feat, loc, mask = pad_regions(image, refcoco.max_region_num)
  ids, input_mask, _ = tokenizer.encode("the left box", refcoco.max_seq_length)
  direct = jax.jit(lambda p: ViLBertForVLTasks(config).apply(
      {"params": p}, ids[None], feat[None], loc[None], input_mask=input_mask[None],
      image_mask=mask[None], task_ids=refcoco.task_id, outputs=("vision_logit",)))(params)
  logits = np.asarray(direct["vision_logit"])[0, :, 0]
  assert ground.result["region"] == int(np.argmax(logits))
  assert ground.result["box"] == pytest.approx(
      image.boxes_pixels5[ground.result["region"], :4].tolist(), abs=0.01)
  assert [r["region"] for r in ground.result["top_regions"]] == \
      np.argsort(-logits[:image.num_boxes], kind="stable")[:4].tolist()

  pointing = predict(params, config, "visual7w", image, "which", tokenizer=tokenizer,
                     candidates=[1, 3])
  assert pointing.result["region"] in (1, 3)
  pair = predict(params, config, "nlvr2", [image, _image("8", seed=1)], "two boxes",
                 tokenizer=tokenizer)
  assert pair.result["prediction"] in ("True", "False")
  assert sum(pair.result["probabilities"].values()) == pytest.approx(1.0)
  score = predict(params, config, "retrieval_coco", image, "a box", tokenizer=tokenizer)
  assert np.isfinite(score.result["alignment_score"])

  with pytest.raises(ValueError, match="unknown task 'vqa3'"):
    predict(params, config, "vqa3", image, "what", tokenizer=tokenizer)
  with pytest.raises(TextTooLong, match=r"task refcoco: the text has 25 word pieces, but the "
                                        r"task holds 18"):
    predict(params, config, "refcoco", image, "word " * 25, tokenizer=tokenizer)
  with pytest.raises(ValueError, match="task nlvr2: takes 2 image"):
    predict(params, config, "nlvr2", image, "two", tokenizer=tokenizer)

  # Feature inputs: an LMDB (missing ids named) and an .npz.
  lmdb_path = str(tmp_path / "features.lmdb")
  write_feature_lmdb(lmdb_path, [{"image_id": 7, "image_h": 80, "image_w": 100,
                                  "boxes": image.boxes_pixels5[1:, :4],
                                  "features": image.features[1:]}])
  assert load_features(lmdb_path, "7").num_boxes == image.num_boxes
  with pytest.raises(DataError, match=r"image id '9': not in this feature file"):
    load_features(lmdb_path, "9")
  np.savez(tmp_path / "one.npz", features=image.features[1:], boxes=image.boxes_pixels5[1:, :4],
           image_w=100, image_h=80)
  np.testing.assert_array_equal(load_features(str(tmp_path / "one.npz")).features,
                                image.features)

  # Pictures: the figure sizes are fixed, with or without the co-attention map.
  canvas = tmp_path / "qa.png"
  assert visualize(qa, str(canvas)) == FIGURE_SIZE
  assert Image.open(canvas).size == FIGURE_SIZE
  picture = np.zeros((80, 100, 3), np.uint8)
  drawn = tmp_path / "ground.png"
  assert visualize(ground, str(drawn), image=picture) == FIGURE_SIZE_NO_ATTENTION
  assert Image.open(drawn).size == FIGURE_SIZE_NO_ATTENTION


def test_region_heat_shows_the_most_attended_box():
  boxes = np.array([[0, 0, 100, 80, 1], [0, 0, 50, 40, 0], [40, 30, 100, 80, 0]], np.float32)
  attention = np.array([[0.2, 0.3, 0.5], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
  heat = region_heat(attention, ["[CLS]", "left", "[SEP]"], boxes, 100, 80, cells=100)
  assert heat.shape == (80, 100)
  assert heat[70, 90] == 1.0 and heat[5, 5] == 0.0    # only the word piece row counts
  assert heat[35, 45] == 1.0                           # overlap: the higher weight, not a sum


# ------------------------------------------------------------------ training curves


def test_plot_reads_dsg_transitions_and_draws_every_task(tmp_path):
  lines = [{"note": "tasks: ['vqa', 'refcoco']"}]
  for it in range(10, 101, 10):
    for task in ("vqa", "refcoco"):
      in_stop = task == "refcoco" and 40 <= it < 80
      lines.append({"iteration": it, "task": task, "kind": "train", "loss": 100.0 / it,
                    "score": it / 200, "lr": 1e-4, "in_stop": in_stop})
  for it, stop in ((30, True), (60, True), (70, False)):
    lines.append({"iteration": it, "task": "refcoco", "kind": "eval", "score": 0.3,
                  "loss": 1.0, "examples": 8, "dsg": {"in_stop": stop}})
  # A resumed run logged iteration 60 of vqa again: the later record wins.
  lines.append({"iteration": 60, "task": "vqa", "kind": "train", "loss": 7.0, "score": 0.1,
                "lr": 1e-4, "in_stop": False})
  text = "\n".join(json.dumps(line) for line in lines) + '\n{"iteration": 110, "ta'
  (tmp_path / "metrics.jsonl").write_text(text)

  series = plot.task_series(plot.read_metrics(str(tmp_path / "metrics.jsonl")))
  assert series["refcoco"]["transitions"] == [(30, "stop"), (70, "go")]
  assert series["vqa"]["transitions"] == []
  assert plot.stop_intervals(series["refcoco"]["transitions"], 100) == [(30, 70)]
  assert plot.stop_intervals([(90, "stop")], 100) == [(90, 100)]
  assert dict((i, loss) for i, loss, _ in series["vqa"]["train"])[60] == 7.0
  path = plot.plot_training(str(tmp_path))
  assert path == str(tmp_path / plot.OUTPUT)
  assert Image.open(path).size == (2 * plot.PANEL_SIZE[0], plot.PANEL_SIZE[1] + plot.HEADER)
  with pytest.raises(ValueError, match=r"task\(s\) \['gqa'\] have no records"):
    plot.plot_training(str(tmp_path), tasks=["gqa"])
