"""``degl.launch`` and ``degl.train_stage``: the pipeline from Python, over torch's own launcher."""

import pytest
import torch

import degl
from launch_fns import (
    async_with_a_slow_first_rank,
    async_with_a_slow_last_rank,
    fail_on_rank_one,
    kill_rank_one,
    sgd,
    tiny_batches,
    tiny_stages,
    train_tiny_pipeline,
    whoami,
)

pytestmark = pytest.mark.distributed


def test_launch_returns_each_ranks_result_with_its_own_threads():
    results = degl.launch(whoami, nprocs=2, args=("hello",), threads=1)
    assert results == [("hello", 0, 2, 1), ("hello", 1, 2, 1)]


def test_python_pipeline_equals_single_process_dgl_bit_for_bit():
    results = degl.launch(train_tiny_pipeline, nprocs=3, args=(2,), threads=1)
    torch.set_num_threads(1)
    stages = tiny_stages(3)
    reference = degl.DGL(stages, make_optimizer=sgd)
    batches = tiny_batches(6)
    for _ in range(2):
        for x, y in batches:
            reference.train_step(x, y)
    for rank, result in enumerate(results):
        assert result["rank"] == rank
        expected = stages[rank].state_dict()
        assert expected.keys() == result["weights"].keys()
        for key, tensor in expected.items():
            assert torch.equal(tensor, result["weights"][key]), (rank, key)
    evaluation = degl.evaluate(stages, tiny_batches(2, size=10, seed=2))
    assert results[0]["test_acc"] == pytest.approx(evaluation.acc, abs=1e-9)
    assert results[1]["test_acc"] is None  # only rank 0 gathers the reports


@pytest.mark.parametrize("method", ["cdni", "ddg"])
def test_python_pipeline_of_an_alternative_equals_one_process_bit_for_bit(method):
    results = degl.launch(train_tiny_pipeline, nprocs=3, args=(2, method), threads=1)
    torch.set_num_threads(1)
    stages = tiny_stages(3)
    reference = degl.build_method(method, stages, make_optimizer=sgd)
    for _ in range(2):
        for x, y in tiny_batches(6):
            reference.train_step(x, y)
        reference.finish_epoch()
    for rank, result in enumerate(results):
        for key, tensor in stages[rank].state_dict().items():
            assert torch.equal(tensor, result["weights"][key]), (rank, key)
    evaluation = degl.evaluate(stages, tiny_batches(2, size=10, seed=2), evaluated=[2])
    assert results[0]["test_acc"] == pytest.approx(evaluation.acc, abs=1e-9)  # the last stage's head only


def test_a_rank_that_raises_is_named():
    with pytest.raises(RuntimeError, match=r"rank 1 \(stage 1\) exited with status 1"):
        degl.launch(fail_on_rank_one, nprocs=2, threads=1, timeout_s=20)


def test_a_rank_that_dies_is_named():
    with pytest.raises(RuntimeError, match=r"rank 1 \(stage 1\) exited with status 7"):
        degl.launch(kill_rank_one, nprocs=2, threads=1, timeout_s=20)


def test_train_stage_refuses_a_world_that_does_not_match_the_stages():
    with pytest.raises(RuntimeError, match="rank 0"):
        degl.launch(train_tiny_pipeline_wrong, nprocs=2, threads=1, timeout_s=20)


def train_tiny_pipeline_wrong(env):
    return degl.train_stage(env, tiny_stages(3), sgd, train_batches=tiny_batches(2))


def test_a_mostly_waiting_rank_gets_a_balance_note(capsys, tmp_path):
    from degl.run.config import TrainConfig
    from degl.run.pipeline_record import RunRecorder

    def reports(waits):
        return [{"timing": {"recv_wait": w}} for w in waits]

    recorder = RunRecorder(TrainConfig(), tmp_path, None)
    recorder._hint_balance(reports([0.0, 0.1]))
    assert "note" not in capsys.readouterr().err
    recorder._hint_balance(reports([0.0, 0.48]))
    note = capsys.readouterr().err
    assert "rank 1 spent 48% of its training time waiting" in note and "--split time" in note
    recorder._hint_balance(reports([0.0, 0.48]))  # once per run
    assert capsys.readouterr().err == ""
    timed = RunRecorder(TrainConfig(split="time"), tmp_path, None)
    timed._hint_balance(reports([0.0, 0.48]))  # already balanced by measured time: nothing to suggest
    assert capsys.readouterr().err == ""


def test_async_fast_rank_waits_for_the_slow_one_longer_than_the_timeout():
    # Rank 1 repeats each step's work 100 times: its 32 updates take seconds after rank 0's are done,
    # while the process group's timeout is 1 s. The release that frees rank 0 travels on a group of
    # its own, so rank 0's long wait for it times nothing out (on the run's group it did).
    steps, served, _ = degl.launch(async_with_a_slow_last_rank, 2, timeout_s=1.0)[0]
    assert steps == [32, 32]  # every rank did exactly epochs x batches updates
    assert served[0] > 0 and served[1] == 0  # rank 0 kept feeding the slow rank, frozen


def test_async_fast_last_rank_waits_for_a_slow_first_rank_longer_than_the_timeout():
    # Rank 1 reuses its buffered batches and is through its 32 updates in a moment; rank 0, 100 times
    # slower, trains for seconds more with nothing to send (it was released), while a rank gives up
    # on a peer silent for 1 s. Its signs of life keep rank 1 waiting for its last message.
    steps = degl.launch(async_with_a_slow_first_rank, 2, timeout_s=1.0)[0]
    assert steps == [32, 32]
