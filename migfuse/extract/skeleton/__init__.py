"""The skeleton track: prepared OpenPose skeletons -> 2s-AGCN / AAGCN feature maps in the cache.

  preprocess.py  OpenPose (T, 137, 3) -> normalised, fixed-length (C, T, V, M) joint / bone arrays
  extractor.py   `migfuse extract skeleton`: write (256, T', V) feature maps into the token cache
The models are in migfuse.backbones (agcn, aagcn, graphs); training in migfuse.finetune.skeleton.
"""
