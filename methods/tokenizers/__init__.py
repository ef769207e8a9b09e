"""Tokenizers shared by all methods. Kinds (``Tokenizer.kind``):

* ``continuous`` — image <-> latent (B, C, h, w): ``kl`` (diffusers AutoencoderKL; MAR's KL-16
  loads into it through methods/tokenizers/mar.py);
* ``multiscale_residual`` — VAR's multi-scale residual VQ (VAR baseline issue);
* ``multiscale_groundtruth`` — FlexVAR's VQ (FlexVAR issue).
"""
from methods.tokenizers.kl import KLConfig, KLTokenizer

__all__ = ["KLConfig", "KLTokenizer"]
