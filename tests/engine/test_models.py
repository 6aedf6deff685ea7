"""load_model: local directories, dtype override, missing paths, and the built-in default model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steering_server.models import load_model
from steering_server.tiny_models import byte_tokenizer, tiny_model

IDS = torch.tensor([[1, 72, 105, 33, 200, 17, 4, 5]])


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A tiny Qwen2 and the byte tokenizer saved as an ordinary Hugging Face directory, plus its logits."""
    path = tmp_path_factory.mktemp("models") / "tiny-qwen"
    model = tiny_model("qwen2", seed=11)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    with torch.no_grad():
        logits = model(IDS).logits
    return path, logits


def test_local_directory_gives_the_same_model(saved: tuple[Path, torch.Tensor]) -> None:
    path, want = saved
    loaded = load_model(str(path), device="cpu")
    assert loaded.model.dtype == torch.float32  # CPU default
    assert not loaded.model.training
    with torch.no_grad():
        got = loaded.model(IDS).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert loaded.num_layers == loaded.model.config.num_hidden_layers == 4
    assert loaded.hidden_size == 64
    assert loaded.layer_path == "model.layers" and loaded.layers is loaded.model.model.layers
    assert loaded.model_id == "tiny-qwen"  # the directory name
    text = "héllo ✓"
    assert loaded.tokenizer.decode(loaded.tokenizer.encode(text, add_special_tokens=False)) == text
    assert loaded.tokenizer.chat_template == byte_tokenizer().chat_template


def test_model_id_file_next_to_the_weights_wins(saved: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    path, _ = saved
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in path.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "steering_model_id.txt").write_text("org/stable-name\n")
    assert load_model(str(copy), device="cpu").model_id == "org/stable-name"


def test_dtype_override(saved: tuple[Path, torch.Tensor]) -> None:
    path, want = saved
    loaded = load_model(str(path), device="cpu", dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())
    with torch.no_grad():
        got = loaded.model(IDS).logits.float()
    # Same model in lower precision: close, and the same greedy choice at most positions.
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.75
    assert (got - want).abs().mean() < 0.1 * want.abs().mean()


def test_unknown_dtype(saved: tuple[Path, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(str(saved[0]), device="cpu", dtype="float8")


@pytest.mark.parametrize("relative", [False, True])
def test_missing_directory(tmp_path: Path, relative: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if relative:
        monkeypatch.chdir(tmp_path)
        name = "./no-such-model"
    else:
        name = str(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError):
        load_model(name, device="cpu")


def test_builtin_model_works() -> None:
    """Whatever the built-in model is (the organism, or the tiny fallback), it loads and predicts."""
    loaded = load_model(None, device="cpu")
    cfg = loaded.model.config.get_text_config()
    assert loaded.model_id
    assert loaded.num_layers == cfg.num_hidden_layers > 0
    assert loaded.hidden_size == cfg.hidden_size
    assert loaded.model.dtype == torch.float32
    ids = loaded.tokenizer.encode("Hello there", add_special_tokens=True)
    assert ids and max(ids) < cfg.vocab_size
    with torch.no_grad():
        out = loaded.model(torch.tensor([ids]), output_hidden_states=True)
    assert out.logits.shape == (1, len(ids), cfg.vocab_size)
    assert torch.isfinite(out.logits).all()
    assert len(out.hidden_states) == loaded.num_layers + 1
