"""The shared training loop (migfuse.training): settings, run-folder rules, checkpoints, resume, curves."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from migfuse.errors import UserError
from migfuse.training.checkpoint import load_checkpoint, save_checkpoint
from migfuse.training.config import parse_sets, resolve_config
from migfuse.training.loop import Selection, epoch_generator, fit
from migfuse.training.run_folder import RunFolder

DEFAULTS = {
    "epochs": 4,           # epochs
    "lr": 0.05,            # SGD learning rate
    "batch_size": 8,       # samples per step
    "seed": 0,             # seed
    "options": {"width": 8},  # nested settings
    "name": None,          # anything
}


def tiny_train(out, cfg, overwrite=False, die_in_epoch=None):
    """A 2-layer net with dropout on fixed random data: the smallest real trainer of the loop API."""
    torch.manual_seed(cfg["seed"])
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(5, cfg["options"]["width"]), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(cfg["options"]["width"], 2))
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)

    def train_epoch(epoch, bar):
        if epoch == die_in_epoch:
            raise KeyboardInterrupt
        order = torch.randperm(40, generator=epoch_generator(cfg["seed"], epoch))
        total = 0.0
        for s in range(0, 40, cfg["batch_size"]):
            idx = order[s:s + cfg["batch_size"]]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            bar.step(loss=loss.item())
        sched.step()
        return {"train_loss": total / 40}

    def validate(epoch):
        model.eval()
        with torch.no_grad():
            logits = model(x)
        return {"val_loss": float(torch.nn.functional.cross_entropy(logits, y)),
                "val_acc": float((logits.argmax(1) == y).float().mean())}

    with RunFolder.open(out, "tiny", cfg, {"data": "random 40x5"}, overwrite=overwrite) as run:
        return fit(run, model, opt, scheduler=sched, epochs=cfg["epochs"], train_epoch=train_epoch,
                   validate=validate, select=Selection("val_acc", "max", tie_break="val_loss"), seed=cfg["seed"],
                   steps_per_epoch=5)


def rows(path):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (path / "metrics.jsonl").read_text().splitlines()]


# ----- settings --------------------------------------------------------------------------------------------
def test_a_string_lr_in_a_config_file_is_one_line_naming_file_key_and_type(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"lr": "fast"}')
    with pytest.raises(UserError) as e:
        resolve_config(DEFAULTS, config=bad)
    assert str(e.value) == f"{bad}: lr must be a number (like the default 0.05), not 'fast'"


def test_toml_file_then_set_then_flags_override_in_that_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('epochs = 7\nlr = 1\n[options]\nwidth = 4\n')
    cfg = resolve_config(DEFAULTS, config=f, sets=["lr=0.5", "name=abc", "options.depth=2"], flags={"lr": 0.25,
                                                                                                    "seed": None})
    assert cfg == {"epochs": 7, "lr": 0.25, "batch_size": 8, "seed": 0, "options": {"width": 4, "depth": 2},
                   "name": "abc"}
    assert isinstance(resolve_config(DEFAULTS, config=f)["lr"], float)


def test_set_values_read_as_json_else_text_and_bad_items_are_refused():
    assert parse_sets(["a=1", "b=0.5", "c=true", "d=null", "e=[1, 2]", "f=cmtf", "g.h=x"]) == \
        {"a": 1, "b": 0.5, "c": True, "d": None, "e": [1, 2], "f": "cmtf", "g": {"h": "x"}}
    with pytest.raises(UserError, match="write KEY=VALUE"):
        parse_sets(["lr"])
    with pytest.raises(UserError, match=r"--set: epochs must be an integer \(like the default 4\), not 2.5"):
        resolve_config(DEFAULTS, sets=["epochs=2.5"])
    with pytest.raises(UserError, match="--set: unknown setting 'lrr'"):
        resolve_config(DEFAULTS, sets=["lrr=1"])
    with pytest.raises(UserError, match="--batch-size: batch_size must be an integer"):
        resolve_config(DEFAULTS, flags={"batch_size": True})


def test_a_run_config_json_is_accepted_as_config(tmp_path):
    cfg = resolve_config(DEFAULTS, sets=["epochs=2", "lr=0.1"])
    tiny_train(tmp_path / "r", cfg)
    assert resolve_config(DEFAULTS, config=tmp_path / "r" / "config.json") == cfg


# ----- run folder ------------------------------------------------------------------------------------------
def test_run_folder_holds_every_file_with_versions_times_and_provenance(tmp_path):
    cfg = resolve_config(DEFAULTS)
    res = tiny_train(tmp_path / "r", cfg)
    r = tmp_path / "r"
    assert sorted(p.name for p in r.iterdir()) == [".lock", "best.pt", "config.json", "curves.png", "last.pt",
                                                  "metrics.csv", "metrics.jsonl", "train.log"]
    doc = json.loads((r / "config.json").read_text())
    assert doc["run"]["trainer"] == "tiny" and {k: v for k, v in doc.items() if k != "run"} == cfg
    assert doc["run"]["provenance"] == {"data": "random 40x5"}
    assert doc["run"]["versions"]["torch"] == torch.__version__ and doc["run"]["started"] <= doc["run"]["ended"]
    assert [row["epoch"] for row in rows(r)] == [1, 2, 3, 4] and res.epochs_run == 4
    with open(r / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(t["val_loss"]) for t in table] == [row["val_loss"] for row in rows(r)]
    assert rows(r)[1]["lr"] == pytest.approx(0.05 * 0.7)  # the lr in effect during epoch 2
    best = load_checkpoint(r / "best.pt")
    assert best["epoch"] == res.best_epoch and best["meta"]["migfuse"]["metrics"]["val_acc"] == res.best["val_acc"]
    assert best["optimizer"] == {} and load_checkpoint(r / "last.pt")["optimizer"]["state"]
    assert (r / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "epoch 4/4: " in (r / "train.log").read_text()


def test_rerun_with_other_settings_is_refused_unless_overwrite(tmp_path):
    cfg = resolve_config(DEFAULTS, sets=["epochs=2"])
    tiny_train(tmp_path / "r", cfg)
    before = (tmp_path / "r" / "best.pt").read_bytes()
    with pytest.raises(UserError) as e:
        tiny_train(tmp_path / "r", {**cfg, "lr": 0.1})
    assert str(e.value).startswith(f"{tmp_path / 'r'} holds a run with other settings (lr=0.05, not 0.1); ")
    assert "--overwrite" in str(e.value) and (tmp_path / "r" / "best.pt").read_bytes() == before
    assert json.loads((tmp_path / "r" / "config.json").read_text())["lr"] == 0.05
    res = tiny_train(tmp_path / "r", {**cfg, "lr": 0.1}, overwrite=True)
    assert res.epochs_run == 2 and load_checkpoint(tmp_path / "r" / "last.pt")["config"]["lr"] == 0.1
    assert len(rows(tmp_path / "r")) == 2


def test_killed_run_resumes_from_last_pt_with_the_metrics_of_an_uninterrupted_run(tmp_path):
    cfg = resolve_config(DEFAULTS)
    with pytest.raises(KeyboardInterrupt):
        tiny_train(tmp_path / "a", cfg, die_in_epoch=3)
    assert len(rows(tmp_path / "a")) == 2 and load_checkpoint(tmp_path / "a" / "last.pt")["epoch"] == 2
    resumed = tiny_train(tmp_path / "a", cfg)
    straight = tiny_train(tmp_path / "b", cfg)
    assert (resumed.epochs_run, straight.epochs_run) == (2, 4)
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert {**resumed.best, "seconds": 0} == {**straight.best, "seconds": 0}
    assert json.loads((tmp_path / "a" / "config.json").read_text())["run"]["resumed"]
    # the same command again has nothing left to do; more epochs extend the run
    assert tiny_train(tmp_path / "a", cfg).epochs_run == 0
    assert tiny_train(tmp_path / "a", {**cfg, "epochs": 5}).epochs_run == 1


def test_early_stop_is_remembered_by_a_rerun(tmp_path):
    cfg = resolve_config(DEFAULTS, sets=["epochs=30"])  # the optimizer's lr 0 below: the metric never improves
    cfg_path = tmp_path / "r"
    with RunFolder.open(cfg_path, "tiny", cfg, {}) as run:
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        res = fit(run, model, opt, epochs=30, train_epoch=lambda e, bar: {"train_loss": 1.0},
                  validate=lambda e: {"val_loss": 1.0}, patience=3)
    assert res.stopped_early and res.best_epoch == 1 and len(res.history) == 4
    with RunFolder.open(cfg_path, "tiny", cfg, {}) as run:
        again = fit(run, model, opt, epochs=30, train_epoch=lambda e, bar: {"train_loss": 1.0},
                    validate=lambda e: {"val_loss": 1.0}, patience=3)
    assert again.epochs_run == 0 and again.best_epoch == 1


def test_a_second_trainer_in_the_same_folder_is_refused_in_one_line(tmp_path):
    cfg = resolve_config(DEFAULTS)
    holder = textwrap.dedent(f"""
        import sys, time
        from migfuse.training.run_folder import RunFolder
        with RunFolder.open({str(tmp_path / "r")!r}, "tiny", {cfg!r}, {{"data": "random 40x5"}}):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    p = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as e:
            tiny_train(tmp_path / "r", cfg)
        assert str(e.value).startswith(f"run folder {tmp_path / 'r'} is in use by another training run")
    finally:
        p.communicate("\n", timeout=60)
    assert tiny_train(tmp_path / "r", cfg).epochs_run == 4  # free again once the other one ended


def test_files_without_a_run_config_are_not_adopted(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "last.pt").write_bytes(b"anything")
    with pytest.raises(UserError, match=r"holds last.pt but no config.json of a migfuse run; .*--overwrite"):
        tiny_train(tmp_path / "r", resolve_config(DEFAULTS))


# ----- checkpoints -----------------------------------------------------------------------------------------
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    good = {"format": "migfuse-checkpoint/1", "state_dict": {"w": torch.ones(3)}}
    save_checkpoint(good, path)

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"format": "migfuse-checkpoint/1", "state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no temporary file left behind


@pytest.mark.parametrize("damage, words", [(b"", "is empty (0 bytes"), (b"PK\x03\x04junk", "is damaged (")])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, damage, words):
    path = tmp_path / "best.pt"
    path.write_bytes(damage)
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"checkpoint {path} {words}") and "\n" not in str(e.value)


def test_a_truncated_real_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint({"format": "migfuse-checkpoint/1", "state_dict": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:-700])
    with pytest.raises(UserError, match=f"checkpoint {path} is damaged"):
        load_checkpoint(path)


def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    cfg = resolve_config(DEFAULTS)
    tiny_train(tmp_path / "r", {**cfg, "epochs": 1})
    evil = textwrap.dedent(f"""
        import os, torch
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned > {marker}",))
        torch.save({{"format": "migfuse-checkpoint/1", "state_dict": {{}}, "meta": Evil()}},
                   {str(tmp_path / 'r' / 'last.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", evil], check=True)
    with pytest.raises(UserError) as e:
        tiny_train(tmp_path / "r", {**cfg, "epochs": 1})
    assert "last.pt holds objects other than tensors and plain values" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_missing_matplotlib_skips_the_png_with_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    tiny_train(tmp_path / "r", resolve_config(DEFAULTS, sets=["epochs=1"]))
    assert not (tmp_path / "r" / "curves.png").exists()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "matplotlib is not installed" in warnings[0].getMessage()


def test_training_imports_neither_extract_nor_fuse_and_the_cli_options_need_no_torch(tmp_path):
    code = textwrap.dedent("""
        import sys
        import migfuse.commands.options, migfuse.training.config
        assert "torch" not in sys.modules
        import migfuse.training.loop, migfuse.training.run_folder, migfuse.training.checkpoint
        leaked = sorted(m for m in sys.modules if m.startswith(("migfuse.extract", "migfuse.fuse")))
        assert not leaked, leaked
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def test_an_attempt_that_failed_before_its_first_epoch_does_not_block_other_settings(tmp_path):
    cfg = resolve_config(DEFAULTS)
    with pytest.raises(UserError):
        with RunFolder.open(tmp_path / "r", "tiny", cfg, {"data": "x"}):
            raise UserError("the data turned out to be incomplete")
    with RunFolder.open(tmp_path / "r", "tiny", {**cfg, "lr": 0.5}, {"data": "y"}) as run:
        assert run.resume_state is None
    doc = json.loads((tmp_path / "r" / "config.json").read_text())
    assert doc["lr"] == 0.5 and doc["run"]["resumed"] == []


def test_a_damaged_config_json_or_metrics_is_one_line(tmp_path):
    cfg = resolve_config(DEFAULTS, sets=["epochs=1"])
    tiny_train(tmp_path / "r", cfg)
    (tmp_path / "r" / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo')
    with pytest.raises(UserError, match=r"metrics.jsonl is damaged \(not one JSON object per line\)"):
        tiny_train(tmp_path / "r", {**cfg, "epochs": 2})
    (tmp_path / "r" / "config.json").write_text("{")
    with pytest.raises(UserError, match=r"config.json is damaged or not a migfuse run file; pass --overwrite"):
        tiny_train(tmp_path / "r", cfg)


# ----- the shared recipe (migfuse.training.recipe) ------------------------------------------------------
WITH_BALANCE = {**DEFAULTS, "balance": "loss"}  # long tail: loss | sampler | none


def legacy_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "earlier release" in r.getMessage()]


def test_the_old_balance_word_weights_means_loss_with_one_warning_wherever_it_is_read(tmp_path, caplog):
    (tmp_path / "old.json").write_text(json.dumps({"balance": "weights", "lr": 0.1}))
    assert resolve_config(WITH_BALANCE, config=tmp_path / "old.json")["balance"] == "loss"
    assert legacy_warnings(caplog) == [f"settings of an earlier release: {tmp_path / 'old.json'}: balance 'weights' "
                                       f"is now called 'loss'"]
    caplog.clear()
    assert resolve_config(WITH_BALANCE, sets=["balance=weights"])["balance"] == "loss"
    assert len(legacy_warnings(caplog)) == 1 and "--set: balance 'weights'" in legacy_warnings(caplog)[0]
    caplog.clear()
    assert resolve_config(WITH_BALANCE, sets=["balance=sampler"])["balance"] == "sampler"
    assert legacy_warnings(caplog) == []


def test_an_unknown_balance_word_is_one_line_naming_the_choices():
    from migfuse.training.recipe import check_balance

    with pytest.raises(UserError) as e:
        check_balance(resolve_config(WITH_BALANCE, sets=["balance=oversample"])["balance"], "--set")
    assert str(e.value) == "--set: balance must be one of loss, sampler, none, not 'oversample'"
    for word in ("loss", "sampler", "none"):
        check_balance(word)


def test_device_and_precision_in_a_file_or_set_are_not_used_and_said_in_one_warning(tmp_path, caplog):
    (tmp_path / "old.toml").write_text('device = "cuda"\nprecision = "bf16"\nepochs = 2\n')
    cfg = resolve_config(WITH_BALANCE, config=tmp_path / "old.toml", sets=["device=cpu"])
    assert cfg == {**WITH_BALANCE, "epochs": 2}
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert warnings[0].getMessage() == (
        f"settings of an earlier release: {tmp_path / 'old.toml'}: device and precision are command options now "
        "(--device / --precision); the value there is not used; --set: device is a command option now (--device); "
        "the value there is not used")


def test_a_run_folder_of_an_earlier_release_resumes_and_its_config_json_reads_back(tmp_path, caplog):
    """config.json written the old way: device and precision among the settings, balance "weights"."""
    cfg = resolve_config(WITH_BALANCE, sets=["epochs=2"])
    with pytest.raises(KeyboardInterrupt):
        tiny_train(tmp_path / "r", cfg, die_in_epoch=2)
    doc = json.loads((tmp_path / "r" / "config.json").read_text())
    old = {**{k: v for k, v in doc.items() if k != "run"}, "balance": "weights", "device": "auto",
           "precision": "auto", "run": {**doc["run"], "provenance": {"data": "random 40x5", "balance": "weights"}}}
    (tmp_path / "r" / "config.json").write_text(json.dumps(old))
    assert tiny_train(tmp_path / "r", cfg).epochs_run == 1  # resumed after epoch 1, not refused
    said = [r.getMessage() for r in caplog.records if "earlier release" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{tmp_path / 'r' / 'config.json'} was written by an earlier "
                                                 "release: device and precision are command options now")
    assert said[0].endswith("balance 'weights' is now called 'loss'")
    new = json.loads((tmp_path / "r" / "config.json").read_text())
    assert "device" not in new and "precision" not in new and new["balance"] == "loss"
    (tmp_path / "r" / "config.json").write_text(json.dumps(old))  # read back as --config: today's words
    assert resolve_config(WITH_BALANCE, config=tmp_path / "r" / "config.json") == cfg
    with pytest.raises(UserError, match=r"holds a run with other settings \(lr=0.05, not 0.1\)"):
        tiny_train(tmp_path / "r", {**cfg, "lr": 0.1})  # a real difference is still refused


def test_class_weights_are_the_three_trainers_earlier_numbers_exactly():
    import numpy as np

    from migfuse.training.recipe import class_weights

    def numpy_inverse_sqrt(labels, num_classes):  # finetune/skeleton.py and finetune/video.py before
        counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
        w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
        return (w / w[counts > 0].mean()).astype(np.float32)

    def torch_power(labels, num_classes, power):  # fuse/train.py before
        counts = torch.bincount(labels, minlength=num_classes).double()
        w = torch.where(counts > 0, counts.clamp(min=1) ** -power, torch.zeros_like(counts))
        return (w / w[counts > 0].mean()).float()

    rng = np.random.default_rng(0)
    for trial in range(300):
        classes = int(rng.choice([2, 7, 32]))
        p = rng.dirichlet(np.full(classes, rng.uniform(0.1, 3.0)))  # long tails, absent classes too
        labels = rng.choice(classes, size=int(rng.integers(1, 14000)), p=p)
        assert np.array_equal(class_weights(labels, classes, power=0.5).numpy(), numpy_inverse_sqrt(labels, classes))
        for power in (0.5, 1.0, 0.25):
            assert torch.equal(class_weights(torch.from_numpy(labels), classes, power),
                               torch_power(torch.from_numpy(labels), classes, power)), (trial, power)
    w = class_weights(np.array([0] * 16 + [1] * 4 + [3]), 4, power=0.5)
    assert w.tolist() == pytest.approx([3 / 7, 6 / 7, 0.0, 12 / 7]) and w.dtype == torch.float32


def test_warmup_cosine_gives_each_trainer_the_multipliers_of_its_earlier_formula():
    import math

    from migfuse.training.recipe import warmup_cosine

    def fuse_before(step, total, warmup):  # fuse/train.py cosine_with_warmup
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def video_before(step, total, warmup, min_ratio):  # finetune/video.py lr_factor
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def skeleton_before(epoch, epochs):  # finetune/skeleton.py's lambda, per epoch
        return min(1.0, (epoch + 1) / 2) * 0.5 * (1 + math.cos(math.pi * epoch / epochs))

    for total in (1, 2, 7, 50, 214 * 15, 1013):
        for warmup in (1, 2, 3, 214, total // 10 or 1):
            for step in range(total + 2):
                assert warmup_cosine(step, total, warmup) == fuse_before(step, total, warmup), (step, total, warmup)
        for warmup in (0, 1, 5, total // 10):
            for min_ratio in (0.0, 0.01, 0.1):
                for step in range(total + 2):
                    assert warmup_cosine(step, total, warmup, min_ratio) == video_before(step, total, warmup,
                                                                                         min_ratio)
    for epochs in (1, 2, 3, 6, 30, 50, 97):
        for epoch in range(epochs + 1):
            assert warmup_cosine(epoch, epochs, 2, cosine_from_start=True) == skeleton_before(epoch, epochs)
    assert [warmup_cosine(s, 10, 2, 0.1) for s in (0, 1, 10)] == [0.5, 1.0, pytest.approx(0.1)]


# ----- a loss that is not a number, no validation set, fewer epochs on resume -----------------------------------
def _fit_steps(out, losses_of_epoch, epochs=3, validate=True):
    """fit() over a 1-weight model whose steps report `losses_of_epoch(epoch)` as their losses."""
    cfg = {**resolve_config(DEFAULTS), "epochs": epochs}
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def train_epoch(epoch, bar):
        for loss in losses_of_epoch(epoch):
            bar.step(loss=loss)
        return {"train_loss": 1.0}

    with RunFolder.open(out, "tiny", cfg, {}) as run:
        return fit(run, model, opt, epochs=epochs, train_epoch=train_epoch,
                   validate=(lambda e: {"val_loss": 1.0 / e}) if validate else None, steps_per_epoch=3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_loss_that_becomes_nan_or_inf_stops_the_run_in_one_line_and_saves_nothing_of_it(tmp_path, bad):
    from migfuse.training.progress import NonFiniteLoss

    with pytest.raises(NonFiniteLoss) as e:
        _fit_steps(tmp_path / "r", lambda epoch: [0.5, 0.4, bad] if epoch == 2 else [0.5, 0.4, 0.3])
    assert str(e.value) == (
        f"training stopped: the loss became {bad} at epoch 2, step 3; likely causes: a learning rate too high "
        "(peak lr 0.05) or NaN/inf values in the inputs. Nothing of this epoch was saved; lower the lr (--lr or "
        "--set lr=...) and rerun with --overwrite")
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert load_checkpoint(tmp_path / "r" / "best.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in rows(tmp_path / "r")] == [1]


def test_a_learning_rate_that_blows_up_stops_with_the_nan_line(tmp_path):
    from migfuse.training.progress import NonFiniteLoss

    cfg = resolve_config(DEFAULTS, sets=["lr=1e30", "epochs=3"])
    with pytest.raises(NonFiniteLoss, match=r"^training stopped: the loss became (nan|inf) at epoch 1, step \d; "
                                            r"likely causes: a learning rate too high \(peak lr 1e\+30\)"):
        tiny_train(tmp_path / "r", cfg)
    assert not (tmp_path / "r" / "best.pt").exists()


def test_weights_broken_by_the_last_step_of_an_epoch_are_never_saved(tmp_path):
    from migfuse.training.progress import NonFiniteLoss

    cfg = {**resolve_config(DEFAULTS), "epochs": 3}
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def train_epoch(epoch, bar):
        bar.step(loss=0.5)  # a finite loss, then an update that breaks the weights
        if epoch == 2:
            with torch.no_grad():
                model.weight.fill_(float("nan"))
        return {"train_loss": 0.5}

    with pytest.raises(NonFiniteLoss) as e:
        with RunFolder.open(tmp_path / "r", "tiny", cfg, {}) as run:
            fit(run, model, opt, epochs=3, train_epoch=train_epoch, validate=lambda e: {"val_loss": 1.0 / e})
    assert str(e.value).startswith("training stopped: the weights became NaN or infinite at epoch 2; likely causes")
    assert load_checkpoint(tmp_path / "r" / "best.pt")["epoch"] == 1
    assert [r["epoch"] for r in rows(tmp_path / "r")] == [1]


def test_a_model_whose_outputs_overflow_is_never_saved_as_best(tmp_path):
    from migfuse.training.progress import NonFiniteLoss

    with pytest.raises(NonFiniteLoss) as e:
        with RunFolder.open(tmp_path / "r", "tiny", {**resolve_config(DEFAULTS), "epochs": 2}, {}) as run:
            fit(run, torch.nn.Linear(1, 1), torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.05), epochs=2,
                train_epoch=lambda epoch, bar: {"train_loss": 0.5},
                validate=lambda epoch: {"val_loss": float("nan"), "val_top1": 0.25})
    assert str(e.value).startswith("training stopped: the validation loss became nan (the model's outputs "
                                   "overflow) at epoch 1; likely causes: a learning rate too high (peak lr 0.05)")
    assert not (tmp_path / "r" / "best.pt").exists() and rows(tmp_path / "r") == []


def test_without_a_validation_set_no_epoch_is_best_and_the_last_is_kept(tmp_path, caplog):
    caplog.set_level("INFO", logger="migfuse")
    res = _fit_steps(tmp_path / "r", lambda epoch: [0.5], epochs=3, validate=False)
    assert res.best_epoch == 3 and load_checkpoint(tmp_path / "r" / "best.pt")["epoch"] == 3
    lines = [r.getMessage() for r in caplog.records]
    assert not [m for m in lines if "(best)" in m]
    assert [m for m in lines if m.startswith("no validation set")] == [
        "no validation set: no epoch is 'best'; best.pt holds the last finished epoch, like last.pt"]
    caplog.clear()
    _fit_steps(tmp_path / "v", lambda epoch: [0.5], epochs=2)  # with one: the better epochs are marked
    assert [m.split(":")[0] for m in (r.getMessage() for r in caplog.records) if m.endswith("(best)")] == [
        "epoch 1/2", "epoch 2/2"]


def test_resuming_with_fewer_epochs_than_the_run_was_started_with_is_refused(tmp_path):
    cfg = resolve_config(DEFAULTS, sets=["epochs=4"])
    with pytest.raises(KeyboardInterrupt):
        tiny_train(tmp_path / "r", cfg, die_in_epoch=3)
    with pytest.raises(UserError) as e:
        tiny_train(tmp_path / "r", {**cfg, "epochs": 2})
    assert str(e.value) == (f"{tmp_path / 'r'} holds a run of epochs=4; resuming it with fewer (--epochs 2) would "
                            "change its learning-rate schedule: rerun with --epochs 4 or more, or pass --overwrite "
                            "to train 2 epochs from scratch")
    assert load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 2  # untouched
    assert tiny_train(tmp_path / "r", cfg).epochs_run == 2  # the same epochs resume
    assert tiny_train(tmp_path / "r", {**cfg, "epochs": 5}).epochs_run == 1  # more extend the run
    assert tiny_train(tmp_path / "r", {**cfg, "epochs": 2}, overwrite=True).epochs_run == 2
