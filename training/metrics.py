"""Evaluation: validation loss plus the task's metric.

classification: valid_loss, valid_accuracy, valid_f1 (binary: class 1 is positive) or valid_f1_macro
(more classes); regression: valid_loss (MSE), valid_pearson, valid_spearman. causal_lm: valid_loss (mean over
learnt tokens) and valid_token_accuracy (argmax next token == target, on learnt tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import numpy as np
import torch
from torch import nn

from training.chat import IGNORE


def f1_score(pred: np.ndarray, gold: np.ndarray, positive: int) -> float:
    tp = float(np.sum((pred == positive) & (gold == positive)))
    fp = float(np.sum((pred == positive) & (gold != positive)))
    fn = float(np.sum((pred != positive) & (gold == positive)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(_ranks(a), _ranks(b))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    task: str,
    num_labels: int,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager[None]],
) -> dict[str, float]:
    """Metrics over all `batches` (model in eval mode for the duration; no RNG is consumed)."""
    was_training = model.training
    model.eval()
    loss_sum, units = 0.0, 0
    preds: list[np.ndarray] = []
    golds: list[np.ndarray] = []
    correct = 0
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                out = model(**batch)
            logits = out.logits.float()
            labels = batch["labels"]
            if task == "classification":
                n = int(labels.shape[0])
                loss_sum += float(out.loss) * n
                units += n
                if num_labels == 1:
                    preds.append(logits.squeeze(-1).cpu().numpy())  # (B,)
                else:
                    preds.append(logits.argmax(-1).cpu().numpy())  # (B,)
                golds.append(labels.cpu().numpy())
            else:
                target = labels[:, 1:]  # (B, T-1): token t predicts token t+1
                mask = target != IGNORE
                n = int(mask.sum())
                loss_sum += float(out.loss) * n
                units += n
                guess = logits[:, :-1].argmax(-1)  # (B, T-1)
                correct += int(((guess == target) & mask).sum())
    finally:
        model.train(was_training)
    metrics = {"valid_loss": loss_sum / max(units, 1)}
    if task == "causal_lm":
        metrics["valid_token_accuracy"] = correct / max(units, 1)
        return metrics
    pred, gold = np.concatenate(preds), np.concatenate(golds)
    if num_labels == 1:
        metrics["valid_pearson"] = pearson(pred.astype(np.float64), gold.astype(np.float64))
        metrics["valid_spearman"] = spearman(pred.astype(np.float64), gold.astype(np.float64))
        return metrics
    metrics["valid_accuracy"] = float(np.mean(pred == gold))
    if num_labels == 2:
        metrics["valid_f1"] = f1_score(pred, gold, positive=1)
    else:
        metrics["valid_f1_macro"] = float(np.mean([f1_score(pred, gold, c) for c in range(num_labels)]))
    return metrics
