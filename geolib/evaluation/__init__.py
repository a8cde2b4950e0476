"""Evaluation layer: the one embedding path (`embedding.embed`), the on-disk embedding cache,
retrieval metrics and exact top-k (`metrics`), the cross-view evaluation every table row comes
from, and the cost (parameters, FLOPs) of a model. It sits below training, so a training loop can
evaluate with the very code that reports its numbers."""
