"""Codecs for activations between stages and in replay buffers: error bounds, byte counts, exactness.

Every codec is exercised on real tensors; the run-level tests train real (tiny) networks through the
CLI, in one process and in two processes over gloo, and compare the weights bit for bit.
"""

from __future__ import annotations

import io
import json

import pytest
import torch

from conftest import SYNTH, run_degl
from degl.cli import main
from degl.core.codecs import Codec, build_codec, channel_dim, check_codec, nbytes, parse_codec
from degl.core.codecs.vq import VQCodec
from degl.core.replay_buffer import ReplayBuffer
from degl.errors import UserError
from degl.run import checkpoint
from degl.runtime.transport import EmulatedLink

CODECS = ["none", "bf16", "fp16", "int8", "int8:sample", "int8:sr", "int8:sample:sr", "vq:16:4", "vq:256:8:256"]
SHAPES = [(16, 5, 3), (24, 8), (7, 16)]  # (C, H, W) maps, (D,) features, (T, D) tokens
DET = [*SYNTH, "--stages", "3", "--epochs", "2", "--threads", "1", "--deterministic"]


def activations(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, *shape, generator=generator) * 3 + 0.5)


def stage_weights(run):
    path, meta = checkpoint.load_meta(run)
    return [checkpoint.load_stage(path, k)["model"] for k in range(meta["num_stages"])]


def assert_same_weights(a, b):
    for wa, wb in zip(stage_weights(a), stage_weights(b), strict=True):
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), key


def summary(run):
    return json.loads((run / "summary.json").read_text())


# ---------------------------------------------------------------------- one codec
@pytest.mark.parametrize("spec", CODECS)
@pytest.mark.parametrize("shape", SHAPES, ids=["maps", "features", "tokens"])
def test_messages_have_the_announced_shapes_and_bytes(spec, shape):
    codec = build_codec(spec, seed=3)
    for train in (True, False, True):
        for n in (32, 5):  # a smaller last batch too
            parts = codec.encode(activations(n, shape, seed=n), train=train)
            specs = codec.specs(n, shape, train=train)
            assert [(tuple(p.shape), p.dtype) for p in parts] == [(tuple(s), d) for s, d in specs]
            assert nbytes(parts) == codec.wire_bytes(n, shape, train=train)
            out = codec.decode(parts, train=train)
            assert out.shape == (n, *shape)


def test_none_sends_the_activations_untouched_in_the_wire_dtype():
    x = activations(8, (16, 5, 3))
    assert build_codec("none").encode(x, train=True)[0] is x
    assert build_codec("none", wire=torch.float32).specs(8, (16, 5, 3), train=True) == [((8, 16, 5, 3), torch.float32)]
    sent = build_codec("none", wire=torch.bfloat16).encode(x, train=True)
    assert torch.equal(sent[0], x.to(torch.bfloat16))


@pytest.mark.parametrize("spec", ["bf16", "fp16"])
def test_casts_are_exactly_a_cast(spec):
    x = activations(8, (16, 5, 3))
    dtype = torch.bfloat16 if spec == "bf16" else torch.float16
    assert torch.equal(build_codec(spec).roundtrip(x, train=True), x.to(dtype).float())


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=["maps", "features", "tokens"])
def test_int8_error_is_at_most_half_a_step(per_sample, shape):
    codec = build_codec("int8:sample" if per_sample else "int8")
    x = activations(12, shape)
    cdim = channel_dim(x.dim())
    x.select(cdim, 0).fill_(2.5)  # a constant channel is sent exactly
    q, scale, lo = codec.encode(x, train=True)
    assert q.dtype == torch.uint8
    step = codec._broadcast(scale, x.dim())
    error = (codec.decode([q, scale, lo], train=True) - x).abs()
    assert (error <= step / 2 + 1e-5 * x.abs().max()).all()
    assert error.select(cdim, 0).max() == 0


def test_int8_stochastic_rounding_is_seeded_and_within_one_step():
    x = activations(12, (16, 5, 3))
    first, again, other = (build_codec("int8:sr", seed=s) for s in (1, 1, 2))
    for _ in range(3):
        a, b, c = (codec.encode(x, train=True) for codec in (first, again, other))
        assert torch.equal(a[0], b[0])
    assert not torch.equal(a[0], c[0])
    error = (first.decode(a, train=True) - x).abs()
    assert (error < first._broadcast(a[1], 4) + 1e-5 * x.abs().max()).all()
    # Unbiased: over many draws the mean decodes close to x (nearest rounding is off by up to a half step).
    draws = torch.stack([first.roundtrip(x, train=True) for _ in range(200)]).mean(0)
    assert (draws - x).abs().mean() < 0.1 * first._broadcast(a[1], 4).mean()
    # Evaluation rounds to nearest, drawing nothing.
    state = first.state_dict()["generator"].clone()
    first.encode(x, train=False)
    assert torch.equal(first.state_dict()["generator"], state)


def clustered(n: int, centers: torch.Tensor, seed: int) -> torch.Tensor:
    """(n, C, 4, 4) maps whose every position's channel vector is a center plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(centers), (n, 4, 4), generator=generator)
    vectors = centers[pick] + 0.01 * torch.randn(n, 4, 4, centers.shape[1], generator=generator)
    return vectors.permute(0, 3, 1, 2).contiguous()


def test_vq_decodes_to_codebook_entries_and_the_receiver_follows_the_sender():
    codec = VQCodec(codes=16, dim=4, rows=4, seed=0)
    for step in range(6):
        x = activations(10, (8, 3, 3), seed=step)
        codes, rows, start = codec.encode(x, train=True)
        assert codes.shape == (10, 3, 3, 2) and codes.dtype == torch.uint8
        assert int(start) == (step * 4) % 16
        out = codec.decode([codes, rows, start], train=True)
        assert torch.equal(codec.copy, codec.published)  # the receiver's copy is the sender's, exactly
        # Every decoded sub-vector is the code its index names, and that code is the nearest live one.
        vectors = out.permute(0, 2, 3, 1).reshape(-1, 2, 4)
        for g in range(2):
            names = codes.reshape(-1, 2)[:, g].long()
            assert torch.equal(vectors[:, g], codec.copy[g][names])
            source = x.permute(0, 2, 3, 1).reshape(-1, 2, 4)[:, g]
            distance = torch.cdist(source, codec.published[g]) ** 2
            distance[:, ~codec.live[g]] = float("inf")
            assert torch.allclose(distance.gather(1, names[:, None]).squeeze(1), distance.min(1).values, atol=1e-4)
    assert codec.live.all()  # every row has been published after C/R messages


def test_vq_learns_the_clusters_and_reseeds_dead_codes():
    torch.manual_seed(0)
    centers = torch.randn(12, 8) * 2
    codec = VQCodec(codes=16, dim=8, rows=16, seed=1)
    for step in range(60):
        codec.encode(clustered(32, centers, step), train=True)
    x = clustered(32, centers, 999)
    error = ((codec.roundtrip(x, train=True) - x) ** 2).mean() / (x**2).mean()
    assert error < 0.01  # 12 clusters, 16 codes: every cluster has its code
    # The data moves far away: codes nobody uses any more die and are re-seeded from the new data.
    before = codec.dead_reseeded
    for step in range(400):
        codec.encode(clustered(32, centers + 20, step), train=True)
    x = clustered(32, centers + 20, 998)
    assert codec.dead_reseeded > before
    assert ((codec.roundtrip(x, train=True) - x) ** 2).mean() / (x**2).mean() < 0.01


def test_vq_state_dict_continues_exactly():
    a, b = VQCodec(codes=16, dim=4, seed=5), VQCodec(codes=16, dim=4, seed=5)
    for step in range(3):
        a.encode(activations(6, (8, 3, 3), seed=step), train=True)
    blob = io.BytesIO()
    torch.save(a.state_dict(), blob)
    blob.seek(0)
    b.load_state_dict(torch.load(blob, weights_only=True))
    x = activations(6, (8, 3, 3), seed=9)
    pa, pb = a.encode(x, train=True), b.encode(x, train=True)
    assert all(torch.equal(u, v) for u, v in zip(pa, pb))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("int9", "expected none, bf16"),
        ("int8:fast", "int8 options"),
        ("vq:x", "vq takes integers"),
        ("vq:1", "codebook size"),
        ("vq:16:4:17", "rows refreshed"),
        ("bf16:2", "takes no options"),
    ],
)
def test_bad_codec_names_are_one_line_errors(text, message):
    with pytest.raises(UserError, match=message):
        parse_codec(text)


def test_a_sub_vector_length_must_divide_the_channels():
    with pytest.raises(UserError, match="cannot be cut into sub-vectors of 6"):
        check_codec("vq:16:6", [(16, 6, 6)])


# ---------------------------------------------------------------------- replay buffers
@pytest.mark.parametrize("spec", ["int8", "vq:16:4", "bf16"])
def test_a_buffer_with_a_codec_stores_less_and_returns_what_the_codec_decodes(spec):
    plain, coded = ReplayBuffer(3), ReplayBuffer(3, codec=build_codec(spec, tag=1))
    twin = build_codec(spec, tag=1)  # the same codec, fed the same batches in the same order
    expected = []
    for i in range(4):
        x = activations(8, (16, 4, 4), seed=i)
        plain.put(x, torch.full((8,), i))
        coded.put(x, torch.full((8,), i))
        expected.append(twin.decode_payload(twin.receive(twin.encode(x, train=True), train=True)))
    assert coded.nbytes < plain.nbytes
    x, y, _ = coded.get()  # newest first
    assert int(y[0]) == 3 and torch.equal(x, expected[3])
    state = coded.state_dict()
    blob = io.BytesIO()
    torch.save(state, blob)
    blob.seek(0)
    copy = ReplayBuffer(3, codec=build_codec(spec, tag=1))
    copy.load_state_dict(torch.load(blob, weights_only=True))
    a, b = coded.get(), copy.get()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_buffer_codec_async_simulation_reports_smaller_buffers(tmp_path):
    runs = {}
    for codec in ("none", "int8"):
        out = tmp_path / codec
        args = [*DET, "--method", "async-dgl", "--buffer", "2", "--buffer-codec", codec, "--out", str(out)]
        assert main(["train", *args]) == 0
        runs[codec] = summary(out)
    assert 0 < runs["int8"]["buffer_bytes"] < 0.4 * runs["none"]["buffer_bytes"]
    assert runs["int8"]["completed"] and runs["int8"]["test_acc"] is not None


# ---------------------------------------------------------------------- whole runs
def test_codec_none_is_todays_run_bit_for_bit(tmp_path):
    assert main(["train", *DET, "--out", str(tmp_path / "default")]) == 0
    assert main(["train", *DET, "--codec", "none", "--out", str(tmp_path / "none")]) == 0
    assert_same_weights(tmp_path / "default", tmp_path / "none")
    s = summary(tmp_path / "none")
    assert s["wire_bytes_per_sample"] == [16 * 6 * 6 * 4, 16 * 6 * 6 * 4] and s["buffer_bytes"] == 0
    assert "test_acc_exact_per_stage" not in s


@pytest.mark.parametrize("spec", ["int8:sr", "vq:16:4"])
def test_a_codec_run_is_deterministic_and_reports_bytes_and_exact_accuracy(tmp_path, spec):
    for name in ("a", "b"):
        assert main(["train", *DET, "--codec", spec, "--out", str(tmp_path / name)]) == 0
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    s = summary(tmp_path / "a")
    codec = build_codec(spec)
    assert s["wire_bytes_per_sample"] == [codec.wire_bytes(32, (16, 6, 6)) / 32] * 2
    assert s["wire_bytes_per_sample"][0] < 16 * 6 * 6 * 4 / 3
    assert len(s["test_acc_exact_per_stage"]) == 3
    lines = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all("exact_acc" in line for line in lines if line["split"] == "test")


def test_a_stopped_codec_run_resumes_to_the_same_weights(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", *DET, "--codec", "vq:16:4", "--out", str(whole)]) == 0
    assert main(["train", *DET, "--codec", "vq:16:4", "--max-steps", "5", "--out", str(parts)]) == 0
    assert main(["train", "--resume", str(parts)]) == 0
    assert_same_weights(whole, parts)


@pytest.mark.distributed
@pytest.mark.parametrize("spec", ["vq:16:4", "int8:sr"])
def test_two_processes_with_a_codec_equal_one_process_simulating_it(tmp_path, spec):
    base = [*SYNTH, "--stages", "2", "--epochs", "2", "--threads", "1", "--deterministic", "--codec", spec]
    done = run_degl("train", *base, "--out", str(tmp_path / "one"))
    assert done.returncode == 0, done.stderr
    done = run_degl("train", *base, "--workers", "2", "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    one, two = summary(tmp_path / "one"), summary(tmp_path / "two")
    assert one["test_acc_per_stage"] == two["test_acc_per_stage"]  # evaluation goes through the codec too
    assert one["wire_bytes_per_sample"] == two["wire_bytes_per_sample"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "backprop", "--codec", "int8"], "--codec int8 applies to --method dgl and async-dgl"),
        (["--method", "sgl", "--codec", "vq"], "--codec vq applies to --method dgl and async-dgl"),
        (["--buffer-codec", "int8"], "--buffer-codec int8 applies to --method async-dgl"),
        (["--codec", "vq:16:5"], "cannot be cut into sub-vectors of 5"),
        (["--codec", "zip"], "--codec 'zip': expected"),
    ],
)
def test_inapplicable_or_bad_codec_options_exit_2_with_one_line(tmp_path, capsys, args, message):
    assert main(["train", *SYNTH, *args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_codec_base_class_is_the_identity():
    x = activations(4, (24, 8))
    assert Codec().roundtrip(x, train=True) is x


# ---------------------------------------------------------------------- the link emulator
def test_an_emulated_link_delivers_messages_one_after_another_at_its_speed():
    link = EmulatedLink(mbps=1.0)  # 125 000 bytes per second
    first = link.delivery(250_000)  # 2 s on the link
    second = link.delivery(125_000)  # sent while the link is busy: waits for it, then 1 s more
    assert second - first == pytest.approx(1.0)


@pytest.mark.distributed
def test_bench_pipeline_with_a_codec_over_an_emulated_link(tmp_path):
    done = run_degl(
        "bench", "pipeline", "--model", "cnn4", "--width", "0.125", "--stages", "2", "--input-shape", "1,12,12",
        "--num-classes", "4", "--batch-size", "8", "--threads", "1", "--steps", "2", "--warmup", "1",
        "--cuts", "2", "--codec", "int8", "--link-mbps", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "EMULATED link 2 Mbit/s" in done.stdout and "pipelined backprop: not run" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    codec = build_codec("int8")
    shape = (16, 6, 6)  # stage 0 of cnn4 width 0.125 cut at block 2
    assert result["message_bytes"] == [codec.wire_bytes(8, shape)]
    assert result["link_ms_per_message_emulated"] == [round(codec.wire_bytes(8, shape) * 8 / 2e6 * 1000, 3)]
    assert result["bound"] in ("communication", "compute") and result["pippy_gpipe_samples_per_s"] is None
    assert len(result["codec_ms_per_step"]) == 2 and result["pipeline_samples_per_s"] > 0


@pytest.mark.distributed
def test_async_pipeline_with_a_codec_and_a_compressed_buffer(tmp_path):
    out = tmp_path / "run"
    args = [*SYNTH, "--method", "async-dgl", "--workers", "3", "--threads", "1", "--epochs", "1", "--buffer", "2"]
    done = run_degl("train", *args, "--codec", "vq:16:4", "--buffer-codec", "int8", "--out", str(out))
    assert done.returncode == 0, done.stderr
    s = summary(out)
    assert s["completed"] and s["wire_bytes_per_sample"] == [build_codec("vq:16:4").wire_bytes(32, (16, 6, 6)) / 32] * 2
    assert 0 < s["buffer_bytes"] < 2 * 2 * 32 * 16 * 6 * 6 * 4 / 3  # two buffers of 2 batches, int8 instead of fp32


@pytest.mark.distributed
def test_the_pipeline_refuses_to_resume_a_stateful_codec_it_did_not_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [*SYNTH, "--stages", "2", "--workers", "2", "--threads", "1", "--codec", "vq:16:4"]
    done = run_degl("train", *args, "--epochs", "2", "--max-steps", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    resumed = run_degl("train", "--resume", str(out), "--workers", "2")
    assert resumed.returncode == 2
    lines = resumed.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot continue this run exactly" in lines[0], lines
