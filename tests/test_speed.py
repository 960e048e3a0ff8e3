"""Speed switches change how the models run, not what they compute: each is applied where it says, outputs stay
equal within float32 rounding, runs record them, and `bench perf --speed-sweep` measures each one's effect."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import bench


def _models(speed):
    from bench.models.loading import Models
    from bench.models.profiles import get_profile

    return Models(get_profile("tiny"), "cpu", speed)


def _unet_out(models) -> torch.Tensor:
    torch.manual_seed(0)
    unet = models.student_unet
    x = torch.randn(2, 4, models.latent_size, models.latent_size)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        return unet(x.contiguous(memory_format=torch.channels_last), 999, context).sample.float()


def test_parse_speed_validates_in_one_line() -> None:
    from bench.api import BenchError
    from bench.models.speed import Speed, parse_speed

    assert parse_speed(["channels_last=on,compile=regional", "attention=eager"]) == Speed("on", "regional", "eager")
    assert parse_speed(None) == Speed()
    with pytest.raises(BenchError, match="unknown config field 'chanels_last'.*did you mean 'channels_last'"):
        parse_speed(["chanels_last=on"])
    with pytest.raises(BenchError, match="compile must be one of off, regional"):
        parse_speed(["compile=full"])
    with pytest.raises(BenchError, match="expects KEY=VALUE"):
        parse_speed(["compile"])


def test_auto_channels_last_is_on_for_cuda_only() -> None:
    from bench.models.speed import Speed

    assert Speed().resolved("cpu")["channels_last"] == "off"
    assert Speed().resolved("cuda:0")["channels_last"] == "on"
    assert Speed(channels_last="on").resolved("cpu")["channels_last"] == "on"


def test_switches_apply_to_unets_and_vae_and_keep_outputs() -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from bench.models.speed import Speed

    default = _models(Speed())
    fast = _models(Speed(channels_last="on", attention="eager"))
    unet = fast.student_unet
    conv = next(m for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(isinstance(p, AttnProcessor) for p in unet.attn_processors.values())
    assert all(isinstance(p, AttnProcessor2_0) for p in default.student_unet.attn_processors.values())
    vae_conv = next(m for m in fast.vae.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert vae_conv.weight.is_contiguous(memory_format=torch.channels_last)
    enc = fast.student_text_encoder  # other roles untouched
    assert all(p.is_contiguous() for p in enc.parameters())
    torch.testing.assert_close(_unet_out(fast), _unet_out(default), rtol=1e-4, atol=1e-5)
    # the process-wide pristine copy is never changed by a run's switches
    pristine = default.get_pristine("student_unet")
    assert all(isinstance(p, AttnProcessor2_0) for p in pristine.attn_processors.values())


def test_regional_compile_wraps_the_repeated_blocks() -> None:
    from bench.models.speed import REGIONS, Speed

    models = _models(Speed(compile="regional"))
    unet = models.student_unet
    blocks = [m for m in unet.modules() if type(m).__name__ in REGIONS]
    assert blocks and all(m._compiled_call_impl is not None for m in blocks)
    decoder = [m for m in models.vae.decoder.modules() if type(m).__name__ in REGIONS]
    assert decoder and all(m._compiled_call_impl is not None for m in decoder)
    assert all(m._compiled_call_impl is None for m in models.vae.encoder.modules() if type(m).__name__ in REGIONS)


def test_runs_record_their_speed_settings(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    from bench import registry

    monkeypatch.setitem(registry.METHODS, "fake", "tests.fake_method:FakeMethod")
    common = ["run", "--method", "fake", "--concepts", "dog", "--data", dreambench_root, "--results", tmp_path]
    code, _, err = bench(monkeypatch, capsys, *common, "--speed", "attention=eager")
    assert code == 0, err
    record = json.loads((tmp_path / "tiny/fake/default/dog/seed0/record.json").read_text())
    assert record["speed"] == {"channels_last": "off", "compile": "off", "attention": "eager", "latents": "cache"}
    code, _, err = bench(monkeypatch, capsys, *common)
    assert code == 0 and "1 skipped" in err, "speed switches are not part of the config hash"
    code, _, err = bench(monkeypatch, capsys, *common, "--speed", "compile=yes")
    assert code == 2 and err.startswith("error: ") and "compile must be one of off, regional" in err


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4).eval()


def _photos(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 16, 16, generator=g) * 2 - 1 for _ in range(n)]


def test_cached_latents_equal_encoding_every_batch_and_encode_each_photo_once() -> None:
    from bench.models.training import Latents, TrainingBatches

    vae = _vae()
    calls = []
    encode = vae.encode
    vae.encode = lambda x: calls.append(x.shape[0]) or encode(x)
    cached, plain = Latents(vae, cache=True), Latents(vae, cache=False)
    a = TrainingBatches(_photos(), "<new1> dog", 2, 2, seed=0, augment=False, hflip=True)
    b = TrainingBatches(_photos(), "<new1> dog", 2, 2, seed=0, augment=False, hflip=True)
    seen = set()
    for _ in range(12):
        batch_a, batch_b = next(a), next(b)
        assert batch_a.keys is not None and torch.equal(batch_a.pixels, batch_b.pixels)
        before = len(calls)
        got = cached(batch_a.pixels, batch_a.keys, torch.Generator().manual_seed(7))
        new = {k for k in batch_a.keys if k not in seen}
        assert len(calls) - before == len(new), "each photo (and its mirror) is encoded once, alone"
        seen |= new
        want = plain(batch_b.pixels, batch_b.keys, torch.Generator().manual_seed(7))
        assert torch.allclose(got, want, atol=1e-5), "same posterior, same sample: the latents do not change"
    assert len(cached.posteriors) == len(seen) <= 6


def test_augmented_batches_are_encoded_every_time_and_streams_never_share_a_cache() -> None:
    from bench.models.training import Latents, TrainingBatches

    vae = _vae()
    latents = Latents(vae, cache=True)
    augmented = next(TrainingBatches(_photos(), "<new1> dog", 2, 2, seed=0, augment=True))
    assert augmented.keys is None
    latents(augmented.pixels, augmented.keys)
    assert not latents.posteriors
    first = next(TrainingBatches(_photos(), "x", 1, 2, seed=0, augment=False, hflip=False))
    other = next(TrainingBatches([p.flip(0) for p in _photos()], "x", 1, 2, seed=0, augment=False, hflip=False))
    assert first.keys[0][1:] == other.keys[0][1:] and first.keys != other.keys  # same photo index, another stream
    one = latents(first.pixels, first.keys, torch.Generator().manual_seed(0))
    two = latents(other.pixels, other.keys, torch.Generator().manual_seed(0))
    assert not torch.allclose(one, two)


@pytest.mark.slow
def test_perf_speed_sweep_measures_each_switch(dreambench_root, tmp_path, monkeypatch, capsys) -> None:
    code, out, err = bench(monkeypatch, capsys, "perf", "--methods", "custom_diffusion", "--warmup", "1",
                           "--iterations", "2", "--sweep-batch", "4", "--device", "cpu", "--data", dreambench_root,
                           "--out", tmp_path, "--speed-sweep")
    assert code == 0, err
    rows = json.loads(next(tmp_path.glob("*.json")).read_text())["methods"]
    assert [r["speed_label"] for r in rows] == ["default", "channels_last=on", "channels_last=off",
                                                "compile=regional", "attention=eager", "latents=encode",
                                                "default, again"]
    assert rows[0]["vs_default"]["train_step_s"] == 1.0
    assert rows[3]["speed"]["compile"] == "regional" and "compile=regional: step x" in out
