"""Annotation readers, one module per dataset family, in plain Python.

Each ``load_*`` function reads one split of the official release layout and
returns an :class:`~twelve_in_one.data.annotations.common.AnnotationSplit`:
plain dict entries with the fields the official dataset classes build, plus
a :class:`~twelve_in_one.data.errors.SkipReport` of what was dropped on
purpose. Bad input raises :class:`~twelve_in_one.data.errors.DataError`.
"""

from twelve_in_one.data.annotations.clean import load_test_image_ids
from twelve_in_one.data.annotations.common import AnnotationSplit, AnswerVocab, build_soft_target
from twelve_in_one.data.annotations.genome import load_genome, load_genome_raw
from twelve_in_one.data.annotations.gqa import load_gqa
from twelve_in_one.data.annotations.guesswhat import load_guesswhat
from twelve_in_one.data.annotations.nlvr2 import load_nlvr2
from twelve_in_one.data.annotations.refer import load_refer
from twelve_in_one.data.annotations.retrieval import load_hard_negatives, load_retrieval
from twelve_in_one.data.annotations.snli_ve import load_snli_ve
from twelve_in_one.data.annotations.visual7w import load_visual7w
from twelve_in_one.data.annotations.vqa import load_vqa, load_vqa_raw

__all__ = [
    "AnnotationSplit",
    "AnswerVocab",
    "build_soft_target",
    "load_genome",
    "load_genome_raw",
    "load_gqa",
    "load_guesswhat",
    "load_hard_negatives",
    "load_nlvr2",
    "load_refer",
    "load_retrieval",
    "load_snli_ve",
    "load_test_image_ids",
    "load_visual7w",
    "load_vqa",
    "load_vqa_raw",
]
