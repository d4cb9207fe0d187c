"""One training-loop style for every migfuse trainer (`fuse train`, `backbone train skeleton`, `... video`).

Torch only: imports neither migfuse.extract nor migfuse.fuse (both use it). This file imports nothing,
so `migfuse.training.config` and `migfuse.training.recipe` stay torch-free for the command line.

Pieces (each one job):
  config.py      DEFAULTS <- --config FILE (JSON/TOML) <- --set k=v <- flags, types checked against DEFAULTS
  recipe.py      the shared vocabulary: balance words, class_weights, warmup_cosine, earlier releases' words
  run_folder.py  the run folder: lock, resume / refuse / --overwrite, config.json, metrics.jsonl + .csv
  checkpoint.py  the one checkpoint format; atomic save; weights-only load with one-line errors
  loop.py        fit(): seed per epoch, train, validate, best.pt, last.pt, early stop, resume, curves.png
  progress.py    one bar per run, log lines above it, lines at intervals off a terminal; NaN loss stops
  curves.py      curves.png (matplotlib, lazy; skipped with a warning when missing)

How a trainer plugs in (the whole contract; fuse/train.py and finetune/skeleton.py are examples):

    from migfuse.training.config import resolve_config, check_choice
    from migfuse.training.loop import Selection, epoch_generator, fit
    from migfuse.training.recipe import class_weights, training_runtime, warmup_cosine
    from migfuse.training.run_folder import RunFolder

    DEFAULTS = {                   # one comment per key: this dict is the documentation
        "epochs": 10,              # epochs in all
        "batch_size": 8,           # clips per step
        "lr": 1e-4,                # peak AdamW learning rate
        "seed": 0,                 # seeds init, dropout and shuffling
    }
    RESUMABLE = ("epochs",)        # settings a rerun may change and still resume

    def train_video(data, out, config=None, sets=(), flags=None, overwrite=False, runtime=None):
        cfg = resolve_config(DEFAULTS, config=config, sets=sets, flags=flags)   # UserError on "lr": "fast"
        runtime = training_runtime(runtime)   # where it runs: device, precision, ranks (not settings)
        ...load data, build model / optimizer / scheduler (from cfg)...
        provenance = {"data": str(data), "clips": n, ...}                      # JSON values: the inputs
        with RunFolder.open(out, "video", cfg, provenance, overwrite=overwrite, resumable=RESUMABLE) as run:
            # locked; run.resume_state is last.pt when resuming (fit() restores it); refused runs raised
            run.update_provenance({"classes": 32, "compute": runtime.record()})   # not compared on rerun
            def train_epoch(epoch, bar):                                       # one epoch, your steps
                for x, y in loader(epoch_generator(cfg["seed"], epoch)):
                    ...loss.backward(); opt.step(); sched.step()
                    bar.step(loss=loss.item())
                return {"train_loss": mean_loss}
            def validate(epoch):
                return {"val_loss": ..., "val_top1": ...}
            result = fit(run, model, opt, scheduler=sched, epochs=cfg["epochs"], train_epoch=train_epoch,
                         validate=validate, select=Selection("val_top1", "max"), seed=cfg["seed"],
                         steps_per_epoch=len(loader), desc="video")
        return result            # result.best (record of best.pt), result.history, result.epochs_run

    # CLI: reuse migfuse.commands.options' option groups (ConfigOpt, SetOpt, EpochsOpt, RuntimeOptions...)

Every run folder then holds config.json (settings, provenance, versions, git commit, start/end times),
metrics.jsonl, metrics.csv, curves.png, best.pt, last.pt and train.log; reruns resume or are refused;
two trainers never share a folder; a damaged or unsafe checkpoint is a one-line UserError. Read a run's
weights with `migfuse.training.checkpoint.load_checkpoint(path)["state_dict"]`.
"""
