"""Fine-tuning trainers of the backbones on a prepared dataset (`migfuse backbone train video|skeleton`).

Built on `migfuse.training` (the one loop, run folder and checkpoint format every trainer shares).
  video.py             video backbone fine-tuning (AdamW, layer-wise lr decay, warm-up + cosine)
  video_models.py      its per-backbone parts: MViTv2-S, Video Swin, VideoMAE / V-JEPA 2 (build, forward, layers)
  video_data.py        its data: the extraction loader with the backbone's recipe, clip order, augmentation
  skeleton.py          one 2s-AGCN / AAGCN stream (joint or bone) from scratch or a published file
  skeleton_data.py     skeleton clips of a prepared folder as a training dataset; the split choice
  skeleton_streams.py  both streams end to end (train, then extract): what the demo calls
"""
