"""Self-contained Hugging Face modeling code shipped with every ``mtkd export`` folder.

``configuration_mtkd.py`` and ``modeling_mtkd.py`` import only torch and transformers
(never mtkd): ``save_pretrained`` copies them next to the weights and registers them in
``config.json``'s ``auto_map``, so the folder loads with
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``
on a machine without mtkd. See :mod:`mtkd.export`.
"""
