"""Skeletons from videos: a person detector + top-down pose model over the frames (`migfuse data pose`).

types       FramePoses and the PoseEstimator protocol (what a model gives per frame)
models      the detector + pose models behind the protocol (`load_pose_estimator`): model_folders,
            detector, top_down, on_device; tiny_models writes small random ones for tests
tracking    the main subject followed across frames, ambiguity recorded
outputs     per-video arrays and status, the output PREPARED folder and the run report
run         the run: plan, decode in workers, estimate, track, write; resumable and sharded
"""
