"""Whole-model support: loading all-MiniLM-L6-v2, capturing a BERT-style encoder into a plain
description, and evaluating it through the device's bit-exact arithmetic."""

from .graph import (ACTIVATIONS, ROLES, EncoderGraph, EncoderLayer, Embeddings, LinearOp, Norm,
                    UnsupportedModuleError, capture)
from .minilm import CALIBRATION_COUNT, MiniLM, load_minilm, load_sentences, sentence_embedding

__all__ = ["ACTIVATIONS", "ROLES", "EncoderGraph", "EncoderLayer", "Embeddings", "LinearOp",
           "Norm", "UnsupportedModuleError", "capture", "CALIBRATION_COUNT", "MiniLM",
           "load_minilm", "load_sentences", "sentence_embedding"]
