"""How a stage spreads over processes and machines: the layout each machine's environment gives, the torchrun
command it becomes, one line for each bad setting, and the FSDP arguments TRL's Trainers receive.
The processes themselves run in tests/test_multinode.py and tests/test_fsdp.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reftflow.distributed import Layout, layout, torchrun_command
from reftflow.errors import InputError
from tests.helpers import ROOT


def test_no_environment_is_one_machine():
    assert layout({}) == Layout(nnodes=1, node_rank=0, endpoint=None, backend="static")


def test_each_machine_gets_its_share_and_node_0_holds_rank_0():
    env = {"REFTFLOW_NNODES": "2", "REFTFLOW_NODE_RANK": "1", "REFTFLOW_RDZV_ENDPOINT": "10.0.0.5:29400"}
    cmd = torchrun_command("rl", 8, "params.yaml", layout(env), "rl.num_processes")
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=4"]
    # static rendezvous: node k holds ranks 4k..4k+3, so node 0 holds rank 0 (c10d would ignore --node_rank)
    assert {"--nnodes=2", "--node_rank=1", "--rdzv_backend=static", "--rdzv_endpoint=10.0.0.5:29400",
            "--rdzv_id=reftflow-rl", "--max_restarts=0"} <= set(cmd)
    assert cmd[-4:] == ["-m", "tasks.rl", "--params", "params.yaml"]


def test_one_machine_is_standalone_and_torchruns_own_variables_count():
    assert "--standalone" in torchrun_command("sft", 2, "p.yaml", layout({}), "sft.num_processes")
    env = {"PET_NNODES": "2", "PET_NODE_RANK": "0", "PET_RDZV_ENDPOINT": "h:1", "PET_RDZV_BACKEND": "c10d"}
    assert layout(env) == Layout(2, 0, "h:1", "c10d")
    assert layout({**env, "REFTFLOW_NNODES": "4"}).nnodes == 4  # ours first


@pytest.mark.parametrize("env, processes, message", [
    ({"REFTFLOW_NNODES": "two"}, 2, "REFTFLOW_NNODES: expected a whole number >= 1 (got 'two')"),
    ({"REFTFLOW_NNODES": "0"}, 2, "REFTFLOW_NNODES: expected a whole number >= 1"),
    ({"REFTFLOW_NNODES": "2", "REFTFLOW_NODE_RANK": "2", "REFTFLOW_RDZV_ENDPOINT": "h:1"}, 2,
     "REFTFLOW_NODE_RANK=2: the node rank must be below the number of machines (REFTFLOW_NNODES=2)"),
    ({"REFTFLOW_NNODES": "2"}, 2, "REFTFLOW_NNODES=2 needs REFTFLOW_RDZV_ENDPOINT=host:port"),
    ({"PET_NNODES": "2", "REFTFLOW_RDZV_ENDPOINT": "node0"}, 2, "REFTFLOW_RDZV_ENDPOINT: expected host:port"),
    ({"REFTFLOW_RDZV_BACKEND": "etcd"}, 2, "REFTFLOW_RDZV_BACKEND: expected static or c10d (got 'etcd')"),
    ({"REFTFLOW_NNODES": "2", "REFTFLOW_RDZV_ENDPOINT": "h:1"}, 3,
     "rl.num_processes=3 is not a multiple of REFTFLOW_NNODES=2"),
])
def test_a_bad_setting_is_one_line_naming_it(env, processes, message):
    with pytest.raises(InputError) as err:
        torchrun_command("rl", processes, "params.yaml", layout(env), "rl.num_processes")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_one_process_stage_runs_on_node_0_and_the_other_machines_have_nothing_to_join(monkeypatch, capsys):
    """e.g. sft on one GPU while rl spans the machines: the same environment on every machine for both."""
    from reftflow.distributed import launch

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("REFTFLOW_NNODES", "2")
    monkeypatch.setenv("REFTFLOW_RDZV_ENDPOINT", "127.0.0.1:1")
    monkeypatch.setenv("REFTFLOW_NODE_RANK", "0")
    assert launch("sft", 1, "params.yaml", "sft.num_processes") is None  # trains in this process
    monkeypatch.setenv("REFTFLOW_NODE_RANK", "1")
    assert launch("sft", 1, "params.yaml", "sft.num_processes") == 0
    assert capsys.readouterr().out == ("sft: sft.num_processes is 1, so the stage runs on node 0 alone: nothing for "
                                       "node 1 to join\n")


def test_the_stage_refuses_a_bad_layout_with_exit_2_before_it_reads_anything(tmp_path):
    """The real entry point, in a directory with nothing but params.yaml: the relaunch is decided first."""
    (tmp_path / "params.yaml").write_text("rl: {algorithm: ppo, num_processes: 2}\n")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "REFTFLOW_NNODES": "2"}
    proc = subprocess.run([sys.executable, "-m", "tasks.rl"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == ("reftflow rl: error: REFTFLOW_NNODES=2 needs REFTFLOW_RDZV_ENDPOINT=host:port: "
                                   "node 0's address and a free port, the same on every machine")


def test_trl_trainers_get_fsdp2_with_whole_state_dicts_and_fsdps_own_checkpointing():
    from reftflow.config import ModelConfig, SFTConfig
    from reftflow.fsdp import trl_args
    from reftflow.sft import _trl_config

    assert trl_args(False, True) == {"activation_checkpointing": True}
    args = _trl_config(SFTConfig(), ModelConfig(fsdp=True, gradient_checkpointing=True), ROOT / "x", 0, 64)
    assert args.fsdp_config["version"] == 2 and args.fsdp_config["state_dict_type"] == "FULL_STATE_DICT"
    assert args.fsdp_config["activation_checkpointing"] is True and args.activation_checkpointing is False
    assert args.fsdp  # transformers keeps the strategy in fsdp_config and the switch here


def _agree(rank: int, port: int, values: list, out) -> None:
    import torch.distributed as dist

    from reftflow.distributed import same_everywhere

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        same_everywhere(values[rank], "the PPO checkpoint to resume")
        out.put((rank, "agreed"))
    except InputError as e:
        out.put((rank, str(e)))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("values, agreed", [(["step-000002", "step-000002"], True), (["step-000002", None], False)])
def test_processes_that_would_resume_different_checkpoints_stop_with_one_line(values, agreed):
    """Two real processes over gloo: one sees a checkpoint the other does not (a `checkpoints/` that is not
    shared between machines); both stop before any step instead of training different steps."""
    import multiprocessing as mp

    from tests.helpers import free_port

    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_agree, args=(r, port, values, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    said = dict(out.get(timeout=5) for _ in procs)
    if agreed:
        assert said == {0: "agreed", 1: "agreed"}
    else:
        assert said[0] == said[1] == (
            "the PPO checkpoint to resume differs between the processes (rank 0: step-000002, rank 1: None): on "
            "several machines the project's checkpoints/ must be on a filesystem they all see (or remove it to "
            "start over)")
