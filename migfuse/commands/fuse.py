"""`migfuse fuse`: train, evaluate and predict with fusion heads on cached tokens; fuse and import scores."""
from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from migfuse.commands.app import deprecated, group
from migfuse.commands.options import (LateMode, RunArg, RuntimeOptions, Split, Task, TrainOptions, parse_name,
                                      path_argument, path_option, with_options)
from migfuse.errors import UserError

app = group("Train, evaluate and predict with fusion heads on cached tokens (laptop-sized); fuse and import scores.")
#: `migfuse scores import` of earlier releases, kept working (hidden) with a deprecation line
scores_app = group("Old name of `migfuse fuse import`.")

AllowMissingOpt = Annotated[bool, typer.Option("--allow-missing", help="Skip clips the cache lacks.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the metrics as JSON (for scripts).")]
RunCacheOpt = Annotated[Optional[Path], path_option(help="Cache to read.",
                                                     show_default="the one the run was trained on")]
RunDataOpt = Annotated[Optional[Path], path_option(help="PREPARED folder.", show_default="the run's")]


@app.command("train")
@with_options(TrainOptions)
@with_options(RuntimeOptions)
def fuse_train_cmd(
    cache: Annotated[Path, path_option(help="The token cache (CACHE.zarr) with views "
                                             "(`migfuse cache view --defaults`).")],
    data: Annotated[Path, path_option(help="The PREPARED folder (manifest) the cache was extracted from.")],
    task: Annotated[Task, typer.Option(help="mg (32 micro-gesture classes, per clip) "
                                            "or emotion (win/lose, per video).")],
    out: Annotated[Path, path_option(use="folder", help="Run folder: config.json, metrics.jsonl/.csv, curves.png, "
                                                        "best.pt, last.pt, train.log. Rerunning the same command "
                                                        "resumes.")],
    runtime: RuntimeOptions,
    train: TrainOptions,
    head: Annotated[Optional[str], typer.Option(parser=parse_name, metavar="<name>",
                                                help="Head (`migfuse fuse heads`).",
                                                show_default="cmtf for mg, interfusion for emotion")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Train without clips the cache lacks "
                                                "(reports how many).")] = False,
) -> None:
    """Train a fusion head on cached tokens (AdamW, cosine with warm-up, label smoothing, class-balanced
    loss, early stopping on validation). mg validation = split_miga validation, or 10% of training
    videos held out when the manifest has none; emotion validation = 15% of split_emotion train
    videos. Settings: DEFAULTS in docs/fuse.md, changed by --config FILE, --set KEY=VALUE and the
    options; --threads defaults to 1 here (tiny heads: more threads cost more than they gain).
    Refuses a cache that lacks clips of the manifest unless --allow-missing."""
    from migfuse.fuse.train import train as train_head
    from migfuse.wording import counted

    summary = train_head(cache, data, task.value, out, head=head, config=train.config, allow_missing=allow_missing,
                         sets=train.sets, flags=train.flags(), overwrite=train.overwrite, runtime=runtime.resolve())
    best = summary["best"]
    scores = ", ".join(f"{k[4:]} {v:.4f}" for k, v in best.items() if k.startswith("val_"))
    typer.echo(f"best epoch {best['epoch']}: {scores}" if scores else
               f"no validation set, so no best epoch: best.pt holds the last one, epoch {best['epoch']}")
    typer.echo(f"{summary['n_train']:,} train / {summary['n_validation']:,} validation "
               f"({summary['validation_source']}); {counted(summary['epochs_run'], 'epoch')} now, "
               f"{summary['train_seconds']:.0f} s; run in {out}")


@app.command("eval")
@with_options(RuntimeOptions)
def fuse_eval_cmd(
    run: RunArg,
    runtime: RuntimeOptions,
    split: Annotated[Split, typer.Option(help="validation = as held out in training.")] = Split.test,
    cache: RunCacheOpt = None,
    data: RunDataOpt = None,
    allow_missing: AllowMissingOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Score the run's best checkpoint on a labelled split. mg: top-1, top-5, mean class accuracy,
    per-class table; emotion: accuracy, F1, ROC-AUC. Files go to RUN/eval_SPLIT/: metrics.json,
    per_class.csv and the charts confusion.png, per_class.png (+ roc.png for emotion; charts need
    matplotlib, the `plots` extra)."""
    from migfuse.fuse.evaluate import evaluate
    from migfuse.fuse.metrics import to_json

    m = evaluate(run, split.value, cache=cache, data=data, allow_missing=allow_missing, runtime=runtime.resolve())
    if json_out:
        typer.echo(to_json(m))
        return
    if m["task"] == "mg":
        typer.echo(f"{split}: {m['n']} clips  top-1 {m['top1']:.2%}  top-5 {m['top5']:.2%}  "
                   f"mean class {m['mean_class_accuracy']:.2%}")
        typer.echo(f"{'class':>5} {'name':24s} {'n':>5} {'acc':>7}")
        for row in m["per_class"]:
            if row["support"]:
                typer.echo(f"{row['class']:>5} {row['name']:24s} {row['support']:>5} {row['accuracy']:>7.1%}")
    else:
        typer.echo(f"{split}: {m['n']} videos  accuracy {m['accuracy']:.2%}  F1 {m['f1']:.3f}  "
                   f"ROC-AUC {m['roc_auc']:.3f}")
    typer.echo("files: " + ", ".join(m["files"].values()))


@app.command("predict")
@with_options(RuntimeOptions)
def fuse_predict_cmd(
    run: RunArg,
    split: Annotated[Split, typer.Option(help="The split to predict.")],
    out: Annotated[Path, path_option(use="file", help="Scores file to write, read by `migfuse export`; "
                                                     "\".npz\" is appended unless the name ends so.")],
    runtime: RuntimeOptions,
    cache: RunCacheOpt = None,
    data: RunDataOpt = None,
    allow_missing: AllowMissingOpt = False,
) -> None:
    """Write class probabilities of every clip (mg) or video (emotion) of a split, keyed by id
    (migfuse.fuse.scores.Scores .npz), for `migfuse export` and late fusion."""
    from migfuse.fuse.predict import predict
    from migfuse.fuse.scores import scores_file

    scores = predict(run, split.value, out, cache=cache, data=data, allow_missing=allow_missing,
                     runtime=runtime.resolve())
    typer.echo(f"wrote {len(scores)} {scores.task} scores ({split}) to {scores_file(out)}")


@app.command("heads")
def fuse_heads_cmd(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="A head: print only its config block.")] = None,
) -> None:
    """List the fusion heads with their default options, as JSON to paste into `fuse train --config`.

    With NAME, prints that head's block alone; without, one JSON object of every head's block. A block is
    {"head": NAME, "head_options": {...}}: copy it into a config file, change an
    option, and pass the file with --config. Descriptions go to stderr, so `migfuse fuse heads cmtf >
    my.json` writes a valid config. Under a head, the input pairs the test suite ran end to end through it
    (extraction or import -> views -> head -> predict -> export); other token groups fit, untried."""
    import json

    from migfuse.fuse.heads import head_class, list_heads

    names = list_heads()
    if name is not None and name not in names:
        raise UserError(f"unknown head {name!r}; choose one of {', '.join(names)}")
    blocks = {}
    for head in [name] if name else names:
        cls = head_class(head)
        typer.echo(f"# {head}: {(cls.__doc__ or '').strip().splitlines()[0]}", err=True)
        for video, pose, test in cls.tried_pairs:
            typer.echo(f"#   tried end to end: {video} + {pose}  [{test}]", err=True)
        blocks[head] = {"head": head, "head_options": dict(cls.DEFAULTS)}
    # One head: its block alone (a whole config file); all: one object of blocks keyed by head.
    typer.echo(json.dumps(blocks[name] if name else blocks, indent=2))

@app.command("late")
def fuse_late_cmd(
    scores: Annotated[list[Path], path_argument(
        metavar="SCORES", help="Two or more scores .npz of one task, e.g. joint bone cmtf.")],
    out: Annotated[Path, path_option(use="file", help="Fused scores .npz to write.")],
    weights: Annotated[Optional[str], typer.Option(help="One weight per file, e.g. 1,1,0.5.", show_default="equal")]
    = None,
    mode: Annotated[LateMode, typer.Option(help="prob: weighted sum of probabilities; log: of log-probabilities.")]
    = LateMode.prob,
    intersect: Annotated[bool, typer.Option("--intersect", help="Fuse only the ids all files share instead of "
                                            "refusing.")] = False,
) -> None:
    """Late (score-level) fusion: weighted sum of several runs' class scores, joined by clip id.

    Rows are matched by id, never by position, so files in different row orders fuse correctly.
    Files with different id sets are refused unless --intersect is given.
    """
    from migfuse.fuse.late_fusion import fuse_late_files, parse_weights

    if len(scores) < 2:
        raise UserError(f"give two or more scores files to fuse (got {len(scores)}: {scores[0]})")

    result = fuse_late_files(scores, parse_weights(weights, len(scores)), mode=mode.value, intersect=intersect)
    path = result.scores.save(out)
    dropped = sum(result.dropped.values())
    note = f" (dropped {', '.join(f'{n} of {k}' for k, n in result.dropped.items() if n)})" if dropped else ""
    typer.echo(f"fused {len(scores)} runs ({mode.value}, weights {','.join(f'{w:.3g}' for w in result.weights)}): "
               f"{len(result.scores)} ids{note} -> {path}")


@app.command("import")
def fuse_import_cmd(
    results: Annotated[Path, path_argument(metavar="RESULTS", help="mmaction2 / pyskl test-result .pkl, "
                                                                    "or a CSV `Id,score...`.")],
    out: Annotated[Path, path_option(use="file", help="migfuse scores .npz to write (for `fuse late`, `export`, "
                                                      "`score`).")],
    ann: Annotated[Optional[Path], path_option(
        help="For a .pkl: the annotation file the test ran on (list file `path label`, or pyskl .pkl).")] = None,
    ann_split: Annotated[Optional[str], typer.Option(
        help="For a pyskl .pkl annotation: the split the test ran on, e.g. test.")] = None,
    task: Annotated[Task, typer.Option(help="mg (32 classes, per clip) or emotion (Lose, Win, per video).")] = Task.mg,
    split_name: Annotated[Optional[str], typer.Option(
        "--split-name", show_default="--ann-split", help="The split name recorded in the scores file.")] = None,
    split: Annotated[Optional[str], typer.Option("--split", hidden=True, help="Old name of --split-name.")] = None,
) -> None:
    """Import another tool's test scores, keyed by clip id, so `migfuse fuse late` ensembles e.g. a
    PoseC3D or VideoSwin run with migfuse heads. A .pkl holds no ids: its rows follow the annotation
    file, and a count or id mismatch is refused. Pickles are read without running code from them."""
    from migfuse.fuse.importers import import_scores

    if split is not None:
        if split_name is not None:
            raise UserError("give --split-name only (--split is its old name here)")
        deprecated("--split (the split name recorded)", "--split-name")
    r = import_scores(results, annotation=ann, ann_split=ann_split, task=task.value, split=split_name or split)
    path = r.scores.save(out)
    note = "; rows were logits: softmax applied" if r.softmax_applied else ""
    typer.echo(f"imported {len(r.scores)} {task.value} score rows "
               f"({r.source_format}, {r.scores.scores.shape[1]} classes)"
               f"{note} -> {path}")


def _old_scores_import(*args, **kwargs) -> None:
    deprecated("`migfuse scores import`", "`migfuse fuse import`")
    fuse_import_cmd(*args, **kwargs)


# the same options as `fuse import`: typer reads them from this signature
_old_scores_import.__signature__ = inspect.signature(fuse_import_cmd, eval_str=True)  # type: ignore[attr-defined]
_old_scores_import.__annotations__ = typing.get_type_hints(fuse_import_cmd, include_extras=True)
scores_app.command("import", hidden=True, help="Old name of `migfuse fuse import`.")(_old_scores_import)
