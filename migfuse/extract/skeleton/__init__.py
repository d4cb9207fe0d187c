"""The skeleton track: graph layouts, preprocessing, 2s-AGCN / AAGCN backbones, training, extraction.

Modules (one job each):
  graphs.py      the spatial adjacency (layouts as data live in data_cache/skeleton_layouts.py)
  preprocess.py  OpenPose (T, 137, 3) -> normalised, fixed-length (C, T, V, M) joint / bone arrays
  agcn.py        2s-AGCN (lshiwjx/2s-AGCN) model + the `agcn` backbone
  aagcn.py       mmaction2 AAGCN(gcn_attention=False) model + the `aagcn` backbone
  data.py        clip datasets built from a prepared folder (Manifest)
  train.py       `migfuse backbone train skeleton`: train one stream on the training split
  extractor.py   `migfuse extract skeleton`: write (256, T', V) feature maps into the token cache
  pipeline.py    both streams end to end (train, then extract): what the demo calls
  toy.py         generated skeleton clips whose classes differ by motion (tests, benchmarks)
"""
