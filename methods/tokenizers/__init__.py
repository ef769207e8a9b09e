"""Tokenizers shared by all methods (contracts in methods/base.py). Kinds (``Tokenizer.kind``):

* ``continuous`` — image <-> latent (B, C, h, w): ``kl`` (diffusers AutoencoderKL; MAR's KL-16
  loads into it, kl.py);
* ``multiscale_residual`` — image <-> per-scale token maps: ``msvq`` (VAR's multi-scale residual VQ);
* ``multiscale_groundtruth`` — image <-> per-scale ground-truth token maps at any scale list:
  ``flexvq`` (FlexVAR's LlamaGen-style VQ).

``ldm.py`` holds the LDM autoencoder layout and key converter all three load through, ``vq.py``
what the two VQs share. Each module registers its tokenizer when imported (pyproject.toml
declares them as entry points).
"""
