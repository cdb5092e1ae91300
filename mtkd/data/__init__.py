"""Task data: the ``prepare`` stage that writes it (:mod:`mtkd.data.stage`), how later
stages read it (:mod:`mtkd.data.prepared`, :mod:`mtkd.data.columns`), tokenization, and
for training the multi-task batch sampler and the collate function."""
