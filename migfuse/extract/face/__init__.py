"""The face track: MTCNN detection + main-face tracking, ArcFace-template alignment, SwinFace features.

Modules: `detect` (faces per frame, one main face per clip), `align` (5-point similarity warp to
112x112), `extractor` (clips -> `face/swinface` and `face_context/swinface` cache groups). The
SwinFace model is the registered `swinface` backbone (migfuse.backbones.swinface).
"""
