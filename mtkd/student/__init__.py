"""Stage 3: the multi-task student, distilled with Ray Train and DeepSpeed."""
