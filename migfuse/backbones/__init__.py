"""Frozen backbones: build, load checkpoints in their official formats, run (torch).

One module per backbone, each registered by name in `registry.BACKBONES` (mvit_v2_s, agcn, aagcn,
swinface). torchvision, timm and facenet-pytorch are imported only through `_torchvision.py`.
"""
