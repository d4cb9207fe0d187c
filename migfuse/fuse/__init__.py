"""Stage 2: light fusion heads trained on cached tokens. Needs torch and `migfuse.data_cache` only.

  heads/      CMTF, InterFusion, single-modality heads (registry: register_head / make_head)
  data.py     which groups and ids to read, checks against the manifest, TokenSet in RAM
  train.py    DEFAULTS + the training loop (`train`), evaluate.py (metrics + charts),
  predict.py  load a run, write Scores; metrics.py (numpy), plots.py (matplotlib charts),
  importers.py  other tools' test scores (mmaction2, pyskl, CSV) as Scores
"""
