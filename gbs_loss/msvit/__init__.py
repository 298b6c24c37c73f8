"""Reference MSViT gate and mixed-scale tokenizer, ready to put in front of any Vision Transformer.

Havtorn, Royer, Blankevoort, Ehteshami Bejnordi, "MSViT: Dynamic Mixed-Scale Tokenization for Vision
Transformers", ICCV Workshops 2023, arXiv 2307.02321.

* `MixedScaleGate` -- one split-or-keep logit per coarse region, soft values for the loss and a hard
  straight-through mask;
* `MixedScaleTokenizer` / `mixed_scale_tokens` -- coarse and fine tokens from a ViT's own patch and
  position embeddings, padded, with a padding mask and a map back to the fine grid;
* `msvit_gate_loss` -- the Generalized Batch-Shaping loss for the gate's soft values;
* `MixedScaleViT` and `TimmMixedScaleViT` -- end-to-end examples (plain PyTorch; ``timm``);
  `from_timm` wraps a timm ViT in one line, its gate loss ready.

``python -m gbs_loss msvit-demo`` trains the gate on scikit-image's photographs (see `gbs_loss.msvit.demo`).
"""

from gbs_loss.msvit.gate import GateOutput, MixedScaleGate
from gbs_loss.msvit.loss import msvit_gate_loss
from gbs_loss.msvit.timm import TimmMixedScaleViT, from_timm
from gbs_loss.msvit.tokenizer import MixedScaleTokenizer, MixedTokens, mixed_scale_tokens
from gbs_loss.msvit.vit import MixedScaleViT, ViTOutput

__all__ = [
    "GateOutput",
    "MixedScaleGate",
    "MixedScaleTokenizer",
    "MixedScaleViT",
    "MixedTokens",
    "TimmMixedScaleViT",
    "ViTOutput",
    "from_timm",
    "mixed_scale_tokens",
    "msvit_gate_loss",
]
