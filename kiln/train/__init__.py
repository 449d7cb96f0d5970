"""Train-time techniques applied before capture: fine-tuning to recover, distillation, pruning."""
