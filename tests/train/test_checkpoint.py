"""Checkpoints: atomic layout, keep-last-N, corrupt files give clear errors and --resume auto falls back."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from vizoo.train import CheckpointError, find_resume_checkpoint, list_checkpoints, load_checkpoint

from .conftest import run_tool


def test_layout(short_run):
    ckpts = list_checkpoints(short_run / "checkpoints")
    assert [p.name for p in ckpts] == ["step-000000003", "step-000000006", "step-000000009"]
    assert (short_run / "checkpoints" / "last").read_text().strip() == "step-000000009"
    assert not [p for p in (short_run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    ckpt = load_checkpoint(short_run / "checkpoints" / "step-000000006")
    st = ckpt.state
    assert (st["epoch"], st["step_in_epoch"], st["step"], st["num_classes"]) == (0, 6, 6, 2)
    assert {"optimizer", "scheduler", "scaler", "rng", "config"} <= set(st)
    assert set(st["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    end = load_checkpoint(short_run / "checkpoints" / "last").state
    assert (end["epoch"], end["step_in_epoch"]) == (1, 0)
    final = load_file(str(short_run / "model.safetensors"))
    assert all(torch.equal(final[k], v) for k, v in load_checkpoint(ckpts[-1]).model.items())


@pytest.mark.parametrize("damage", ["truncate", "garbage_state"])
def test_corrupt_checkpoint(short_run, tmp_path, damage):
    out = tmp_path / "run"
    shutil.copytree(short_run, out)
    newest = out / "checkpoints" / "step-000000009"
    if damage == "truncate":
        f = newest / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        expect = "model.safetensors' is corrupt"
    else:
        (newest / "state.pt").write_bytes(b"\x00garbage" * 10)
        expect = "state.pt' is corrupt or truncated"
    with pytest.raises(CheckpointError, match=expect) as info:
        load_checkpoint(newest)
    assert "step-000000006" in str(info.value) and "--resume auto" in str(info.value)
    assert (out / "checkpoints" / "step-000000006" / "model.safetensors").is_file()  # the last good one is kept
    ckpt = find_resume_checkpoint(out)  # --resume auto falls back to it
    assert ckpt.path.name == "step-000000006"


def test_corrupt_checkpoint_tool_message(short_run, lfw_data, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(short_run, out)
    newest = out / "checkpoints" / "step-000000009"
    (newest / "model.safetensors").write_bytes(b"garbage")
    proc = run_tool(["--data-dir", lfw_data, "--img-size", 32, "--workers", 0, "--resume", newest, "--output", out])
    assert proc.returncode == 1, proc.stderr
    assert "is corrupt" in proc.stderr and "--resume auto" in proc.stderr and "Traceback" not in proc.stderr


def test_one_error_type_for_weights_files_and_training_checkpoints(tmp_path):
    """A missing weights file and a missing training checkpoint raise the same class, a ValueError, so callers
    catch one type (`vizoo export` reads both kinds)."""
    from vizoo.utils.checkpoint import CheckpointError as WeightsError
    from vizoo.utils.checkpoint import read_state_dict

    with pytest.raises(WeightsError) as weights:
        read_state_dict(tmp_path / "missing.pth")
    with pytest.raises(WeightsError) as training:
        load_checkpoint(tmp_path / "missing")
    assert type(weights.value) is type(training.value) is CheckpointError
    assert isinstance(training.value, ValueError)


def test_resume_from_a_weights_file_says_what_resume_takes(lfw_data, tmp_path, capsys):
    """`--resume OUTPUT/model_ema.safetensors` (the final weights, not a checkpoint) names what --resume takes and
    points to --initial-checkpoint, rather than reporting that the output folder has no state.pt."""
    from safetensors.torch import save_file

    from vizoo.cli import main

    out = tmp_path / "run"
    out.mkdir()
    weights = out / "model_ema.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))
    with pytest.raises(CheckpointError, match="is a file, not a training checkpoint: --resume takes a checkpoint"):
        load_checkpoint(weights)
    args = ["--data-dir", lfw_data, "--img-size", 32, "--workers", 0, "--resume", weights, "--output", out]
    assert main(["train", *map(str, args)]) == 1
    err = capsys.readouterr().err
    assert "written by `vizoo train`" in err and "'auto'" in err and "--initial-checkpoint" in err, err
    assert "no state.pt" not in err


def test_ema_copies_state_fitted_on_the_first_batch(lfw_data, tmp_path):
    """EcoFormer fits its hashing buffers on the first training batch: the EMA must hold the fitted values, not an
    average of them with the unfitted init (timm's EMA averages every float buffer)."""
    from vizoo.train import train

    from .conftest import small_config

    cfg = small_config(lfw_data, tmp_path / "out", model="test_pvt_v2_ecoformer", model_ema=True, epochs=1)
    result = train(cfg)
    model, ema = (
        load_file(str(result.output / "model.safetensors")),
        load_file(str(result.output / "model_ema.safetensors")),
    )
    hashing = [k for k in model if ".hashing." in k]
    assert hashing and all(bool(model[k]) for k in hashing if k.endswith("fitted"))
    for key in hashing:
        torch.testing.assert_close(ema[key], model[key], rtol=0, atol=0, msg=key)


def test_load_finetuned_rebuilds_the_model_and_refuses_what_does_not_fit(tmp_path, capsys):
    """A fine-tuning checkpoint keeps the builder's arguments: ``load_finetuned`` rebuilds the segmentor with its
    weights. A checkpoint without them, or whose weights do not fit them, gets an error that says what to do, and so
    does `vizoo export` on it."""
    from vizoo.cli import main
    from vizoo.heads import create_segmentor
    from vizoo.train.checkpoint import save_checkpoint
    from vizoo.train.finetune import load_finetuned

    torch.manual_seed(0)
    model = create_segmentor("test_vmamba", "mlp", num_classes=3, channels=16)
    assert model.architecture["builder"] == "segmentor" and model.architecture["num_classes"] == 3
    path = save_checkpoint(tmp_path / "good", 1, model.state_dict(), {"architecture": model.architecture})
    loaded = load_finetuned(path)
    assert not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())

    plain = save_checkpoint(tmp_path / "plain", 1, model.state_dict(), {"architecture": None})
    with pytest.raises(CheckpointError, match="keeps no architecture.*load the checkpoint's model.safetensors"):
        load_finetuned(plain)
    other = dict(model.architecture, num_classes=5)
    misfit = save_checkpoint(tmp_path / "misfit", 1, model.state_dict(), {"architecture": other})
    with pytest.raises(CheckpointError, match="its weights do not fit its architecture"):
        load_finetuned(misfit)
    assert main(["export", str(misfit), "--output", str(tmp_path / "m.onnx")]) == 2
    assert "its weights do not fit its architecture" in capsys.readouterr().err
    assert main(["export", str(path), "--checkpoint", "w.pth"]) == 2
    assert "drop --checkpoint" in capsys.readouterr().err
