"""Dataset ingestion: iMiGUE downloads in every layout -> a PREPARED folder (numpy only, no torch, no zarr).

  layouts/          oulu, miga2025, miga2023 readers (labels, skeleton sources, video files)
  prepare.py        `migfuse data prepare`: manifest.csv, videos.csv, skeleton arrays, prepare_report.json
  manifest.py       Manifest / Clip / VideoInfo: the PREPARED folder as objects
  classes.py        the 32 class names, raw class <-> index, split constants
  openpose.py, xlsx.py, skeleton_layouts.py   skeleton sources and joint layouts as data
  video_facts.py    subject and Win/Lose of the real iMiGUE videos
  video_measure.py  what decodes from a video file (length, time origin, fps, size), not its header's claim
  orientation.py    display rotation of a video track
  pyskl.py          `migfuse data export-pyskl`: prepared skeletons as a pyskl annotation pickle
"""
