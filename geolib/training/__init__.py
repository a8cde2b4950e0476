"""Training layer: the shared loop and its losses, and each recipe built on them: Phase 1
cross-view training (`crossview`, with the profile adapters), multi-view places (`multiview`),
distillation (`distill4geo`, `teachers`), SAFA, CosPlace, Divide & Classify (`dc`), the hierarchical
classifier, their shared group training (`groups`), and what a run needs (`needs`)."""
