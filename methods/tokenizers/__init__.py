"""Tokenizers shared by all methods. Kinds (``Tokenizer.kind``):

* ``continuous`` — image <-> latent (B, C, h, w): ``kl`` (diffusers AutoencoderKL; MAR's KL-16
  loads into it through methods/tokenizers/mar.py);
* ``multiscale_residual`` — image <-> per-scale token maps: ``msvq`` (VAR's multi-scale residual VQ);
* ``multiscale_groundtruth`` — image <-> per-scale ground-truth token maps at any scale list:
  ``flexvq`` (FlexVAR's LlamaGen-style VQ).
"""
from methods.tokenizers.kl import KLConfig, KLTokenizer
from methods.tokenizers.flexvq import FlexVQConfig, FlexVQTokenizer
from methods.tokenizers.msvq import MSVQConfig, MSVQTokenizer

__all__ = ["FlexVQConfig", "FlexVQTokenizer", "KLConfig", "KLTokenizer", "MSVQConfig", "MSVQTokenizer"]
