"""SFT's Trainer checkpoints: a run that finds a complete checkpoint at its last step trains nothing
more and saves the same model (what a stage that failed after training, say on a down MLflow,
does when run again); a checkpoint a kill left half-written is never resumed."""

from __future__ import annotations

from pathlib import Path

from reftflow.config import ModelConfig, SFTConfig
from reftflow.data.synthetic import generate
from reftflow.sft import train_sft
from reftflow.trainer_checkpoints import COMPLETE_MARKER, last_complete as last_complete_checkpoint

MODEL = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=128, torch_threads=1)
SFT = SFTConfig(epochs=1, batch_size=8, max_steps=4, logging_steps=1, checkpoint_every=2)


def _weights(model_dir: Path) -> bytes:
    return (model_dir / "model.safetensors").read_bytes()


def test_a_finished_checkpoint_is_resumed_without_training(tmp_path):
    records = generate(32, seed=0, max_ops=2)
    ckpt = tmp_path / "ckpt"
    first = train_sft(records, MODEL, SFT, tmp_path / "a", seed=0, checkpoint_dir=ckpt)
    assert first["global_steps"] == 4 and first["resumed_from_step"] == 0
    assert last_complete_checkpoint(ckpt).name == "checkpoint-4"  # the Trainer's save at the end, marked

    logged: list[int] = []
    again = train_sft(records, MODEL, SFT, tmp_path / "b", seed=0, checkpoint_dir=ckpt,
                      on_log=lambda step, m: logged.append(step) if "loss" in m else None)
    assert again["resumed_from_step"] == 4 and again["global_steps"] == 4
    assert logged == [1, 2, 3, 4]  # the record of the steps it did not redo is replayed
    assert _weights(tmp_path / "b") == _weights(tmp_path / "a")


def test_an_unmarked_checkpoint_is_removed_not_resumed(tmp_path):
    for step, complete in ((2, True), (4, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / COMPLETE_MARKER).write_text("")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert not (tmp_path / "checkpoint-4").exists()
