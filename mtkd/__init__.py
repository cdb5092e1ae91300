"""mtkd: multi-task knowledge distillation (MT-DNN-KD) on Ray."""

__version__ = "0.1.0"
