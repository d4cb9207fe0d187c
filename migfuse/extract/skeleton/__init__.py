"""The skeleton track: prepared OpenPose skeletons -> 2s-AGCN / AAGCN feature maps in the cache.

  preprocess.py  OpenPose (T, 137, 3) -> normalised, fixed-length (C, T, V, M) joint / bone arrays
  extractor.py   `migfuse extract skeleton`: write (256, T', V) feature maps into the token cache
  heatmap_extractor.py  PoseC3D on pseudo-heatmap volumes (backbones.pose_heatmaps)
  track.py       which of the two a `--backbone` builds (registered for the joint and bone tracks)
The models are in migfuse.backbones (agcn, aagcn, graphs); training in migfuse.finetune.skeleton.
"""
