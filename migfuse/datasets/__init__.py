"""Dataset ingestion: iMiGUE downloads in every layout -> a PREPARED folder (numpy only, no torch, no zarr).

  layouts/          oulu, miga2025, miga2023 readers (labels, skeleton sources, video files)
  prepare.py        `migfuse data prepare`: manifest.csv, videos.csv, skeleton arrays, prepare_report.json
  manifest.py       Manifest / Clip / VideoInfo: the PREPARED folder as objects
  classes.py        the 32 class names, raw class <-> index, split constants
  openpose.py, xlsx.py, skeleton_layouts.py   skeleton sources and joint layouts as data
  video_facts.py, orientation.py   what a video file says about itself (frames, display rotation)
  pyskl.py          `migfuse data export-pyskl`: prepared skeletons as a pyskl annotation pickle
"""
