import pytest
import torch
from torch import nn

from benchmark.config import TrainConfig
from benchmark.trainer import NonFiniteLossError, Trainer, lr_at


def regression(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.1), nn.GELU(), nn.Linear(16, 1))
    w = torch.randn(4, 1, generator=torch.Generator().manual_seed(99))  # the task, not the init

    def batch_loss(step, g):
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(step))
        noise = 0.1 * torch.randn(32, 1, generator=g)
        return ((model(x) - (x @ w + noise)) ** 2).mean()

    return model, batch_loss


CFG = TrainConfig(steps=12, batch_size=32, lr=1e-2, warmup_steps=2, checkpoint_every=3, log_every=1, ema_rate=0.9)


def test_resume_continues_the_same_loss_curve(tmp_path):
    model, loss = regression()
    straight = Trainer(model, loss, CFG, tmp_path / "a").fit()

    model, loss = regression()

    def dies_at_step_8(step, g):  # the job is killed mid-run, after the checkpoint at step 6
        if step == 8:
            raise KeyboardInterrupt
        return loss(step, g)

    with pytest.raises(KeyboardInterrupt):
        Trainer(model, dies_at_step_8, CFG, tmp_path / "b").fit()
    model, loss = regression(seed=123)  # a fresh process: other init, restored from the checkpoint
    resumed = Trainer(model, loss, CFG, tmp_path / "b").fit()
    assert [s for s, _ in resumed] == [s for s, _ in straight]
    assert [l for _, l in resumed] == pytest.approx([l for _, l in straight], rel=1e-6)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model, loss = regression()
    bad = lambda step, g: loss(step, g) * (float("nan") if step == 7 else 1.0)
    trainer = Trainer(model, bad, CFG, tmp_path)
    with pytest.raises(NonFiniteLossError, match="step 7.*checkpoint-last.pt"):
        trainer.fit()
    state = torch.load(tmp_path / "checkpoint-last.pt", weights_only=True)
    assert state["step"] == 6 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not list(tmp_path.glob("*.tmp"))


def test_non_finite_batches_are_skipped_when_configured(tmp_path, capsys):
    """train.skip_nonfinite=N: up to N batches with a NaN/Inf loss make no update; training
    goes on to the end; one more stops it as before."""
    from dataclasses import replace
    model, loss = regression()
    bad = lambda step, g: loss(step, g) * (float("nan") if step in (4, 9) else 1.0)
    history = Trainer(model, bad, replace(CFG, skip_nonfinite=2), tmp_path / "a").fit()
    state = torch.load(tmp_path / "a" / "checkpoint-last.pt", weights_only=True)
    assert state["step"] == CFG.steps and state["skipped"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values()) and all(map(lambda h: h[1] == h[1], history))
    assert "loss is nan at step 4; batch skipped, no update (1 of train.skip_nonfinite=2)" in capsys.readouterr().err
    model, loss = regression()
    with pytest.raises(NonFiniteLossError, match="step 9"):
        Trainer(model, bad, replace(CFG, skip_nonfinite=1), tmp_path / "b").fit()


def test_corrupt_checkpoint_is_reported(tmp_path):
    (tmp_path / "checkpoint-last.pt").write_bytes(b"not a checkpoint")
    model, loss = regression()
    with pytest.raises(RuntimeError, match="corrupt.*delete it"):
        Trainer(model, loss, CFG, tmp_path).fit()


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1.0, min_lr=0.0, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.5, abs=0.02) and lr_at(100, cfg) == pytest.approx(0.0, abs=1e-9)


def test_ema_tracks_weights(tmp_path):
    model, loss = regression()
    trainer = Trainer(model, loss, CFG, tmp_path)
    trainer.fit()
    ema, raw = trainer.ema["0.weight"], model.state_dict()["0.weight"]
    assert not torch.equal(ema, raw) and (ema - raw).abs().max() < 1.0


class Preempted(Exception):
    pass


def test_signal_mid_step_checkpoints_at_that_step_then_resumes(tmp_path):
    """Slurm's warning signal (here SIGUSR1 with a handler standing in for submitit's requeue)
    arrives mid-step: the step finishes, a checkpoint is written at it, the handler runs; the
    resumed run ends exactly where an uninterrupted one does."""
    import signal
    model, loss = regression()
    straight = Trainer(model, loss, CFG, tmp_path / "a").fit()

    def requeue(signum, frame):
        raise Preempted

    def signalled_at_step_4(step, g):
        if step == 4:
            signal.raise_signal(signal.SIGUSR1)   # delivered now, held by the trainer
        return loss(step, g)

    model, loss = regression()
    previous = signal.signal(signal.SIGUSR1, requeue)
    try:
        with pytest.raises(Preempted):
            Trainer(model, signalled_at_step_4, CFG, tmp_path / "b").fit()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    # Saved after step 4 finished (5 steps done), not at the periodic checkpoint (step 3).
    assert torch.load(tmp_path / "b" / "checkpoint-last.pt", weights_only=True)["step"] == 5
    assert signal.getsignal(signal.SIGUSR1) is previous
    model, loss = regression(seed=7)
    resumed = Trainer(model, loss, CFG, tmp_path / "b").fit()
    assert [l for _, l in resumed] == pytest.approx([l for _, l in straight], rel=1e-6)


def test_one_signal_sent_two_ways_is_one_request_and_a_later_repeat_acts_now(tmp_path, monkeypatch):
    """Ctrl-C reaches a local job from the terminal and from the sweep's client at once: held
    as one (checkpoint at the end of the step). Asked again later, it acts at once, mid-step."""
    import signal

    import benchmark.trainer as trainer_module

    def requeue(signum, frame):
        raise Preempted

    def twice_at_step_4(step, g):
        if step == 4:
            signal.raise_signal(signal.SIGUSR1)
            signal.raise_signal(signal.SIGUSR1)
        return loss(step, g)

    previous = signal.signal(signal.SIGUSR1, requeue)
    try:
        model, loss = regression()
        with pytest.raises(Preempted):
            Trainer(model, twice_at_step_4, CFG, tmp_path / "a").fit()
        assert torch.load(tmp_path / "a" / "checkpoint-last.pt", weights_only=True)["step"] == 5
        monkeypatch.setattr(trainer_module, "REPEAT_S", 0.0)   # the repeat comes "later"
        model, loss = regression()
        with pytest.raises(Preempted):
            Trainer(model, twice_at_step_4, CFG, tmp_path / "b").fit()
        assert torch.load(tmp_path / "b" / "checkpoint-last.pt", weights_only=True)["step"] == 3   # the periodic one
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_signal_in_the_last_step_is_not_lost(tmp_path):
    """A signal during the last backward pass: handed on after the final checkpoint."""
    import signal
    model, loss = regression()

    def requeue(signum, frame):
        raise Preempted

    def signalled_in_last_step(step, g):
        value = loss(step, g)
        if step == CFG.steps - 1:   # during the backward pass, after the step's collective
            value.register_hook(lambda grad: signal.raise_signal(signal.SIGUSR2))
        return value

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        with pytest.raises(Preempted):
            Trainer(model, signalled_in_last_step, CFG, tmp_path).fit()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert torch.load(tmp_path / "checkpoint-last.pt", weights_only=True)["step"] == CFG.steps
