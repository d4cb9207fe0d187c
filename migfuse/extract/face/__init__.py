"""The face track: MTCNN detection + main-face tracking, ArcFace-template alignment, SwinFace features.

Modules: `detect` (faces per frame, one main face per clip), `align` (5-point similarity warp to
112x112), `swinface` (the registered `swinface` backbone), `extractor` (clips -> `face/swinface`
and `face_context/swinface` cache groups).
"""
