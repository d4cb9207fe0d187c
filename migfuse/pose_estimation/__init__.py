"""Skeletons from videos: a person detector and a top-down 2-D pose model over the frames (`data pose`)."""
