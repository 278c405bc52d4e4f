"""Enumerations several stages' params share, as ``Literal`` types: the generated config schema
lists their values (``enum``) and :func:`pipeline.core.stage.build_params` refuses any other."""

from typing import Literal

Dtype = Literal["float32", "bfloat16", "float16"]
"""A model's compute dtype."""
MixedDtype = Literal["float32", "bfloat16"]
"""A dtype for training an adapter: ``bfloat16`` keeps base weights in bf16 under bf16 autocast
(the adapter stays fp32)."""
Similarity = Literal["auto", "minilm", "token_f1"]
"""A free-text scorer: ``minilm`` (sentence embeddings), ``token_f1`` (lexical) or ``auto``."""
