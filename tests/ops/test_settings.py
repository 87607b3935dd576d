"""OpSettings (ops/settings.py): the one place an op's implementation is chosen, given to the model when it is built,
read from a training YAML's `ops:` section and written back into the resolved config."""

import pytest
import torch
import yaml

from smollm3 import build_model, preset
from smollm3.checkpoint import with_settings
from smollm3.config import ConfigError
from smollm3.ops.settings import AttnBackend, OpSettings
from smollm3.train.config import dump_config, load_train_config


def test_backend_is_an_enum_and_bad_values_get_one_line():
    assert OpSettings(attn_backend="sdpa").attn_backend is AttnBackend.SDPA
    with pytest.raises(ValueError, match="ops.attn_backend 'flash' is unknown; choose one of auto, sdpa, flex, varlen"):
        OpSettings(attn_backend="flash")
    with pytest.raises(ValueError, match="ops.swiglu_kernel must be true or false"):
        OpSettings(swiglu_kernel="no")
    with pytest.raises(ValueError, match="ops.stored_dlogits_bytes -1 must be 0 or more"):
        OpSettings(stored_dlogits_bytes=-1)
    with pytest.raises(ValueError, match="ops.stored_dlogits_bytes '8 gigs' is not a size; write e.g. 8GiB"):
        OpSettings(stored_dlogits_bytes="8 gigs")
    with pytest.raises(AttributeError):  # frozen: chosen when the model is built, never flipped afterwards
        OpSettings().triton_attention = False


def test_the_training_yaml_ops_section_reaches_the_model_and_the_resolved_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "tiny"}, "ops": {"attn_backend": "sdpa"}}))
    cfg = load_train_config(path, ["ops.swiglu_kernel=false"])
    assert cfg.ops == OpSettings(attn_backend="sdpa", swiglu_kernel=False)
    resolved = yaml.safe_load(dump_config(cfg))["ops"]
    assert resolved["attn_backend"] == "sdpa" and resolved["swiglu_kernel"] is False
    assert load_train_config(None, [f"{k}={v}" for k, v in {"model.preset": "tiny", "ops.attn_backend": "sdpa",
                                                             "ops.swiglu_kernel": "false"}.items()]).ops == cfg.ops
    with pytest.raises(ConfigError, match="ops: attn_backend must be one of auto, sdpa, flex, varlen, cudnn, got 'fast'"):
        load_train_config(None, ["model.preset=tiny", "ops.attn_backend=fast"])
    assert load_train_config(None, ["model.preset=tiny", "ops.stored_dlogits_bytes=8GiB"]).ops.stored_dlogits_bytes \
        == 8 * 2**30  # a size string is bytes once built, and so in the resolved config
    with pytest.raises(ConfigError, match="unknown key.*'swiglu'"):
        load_train_config(None, ["model.preset=tiny", "ops.swiglu=false"])


def test_with_settings_copies_the_weights_under_other_settings():
    model = build_model(preset("tiny")).eval()
    twin = with_settings(model, OpSettings(attn_backend="sdpa"))
    assert twin.settings.attn_backend == "sdpa" and model.settings.attn_backend == "auto" and not twin.training
    assert all(a is not b for a, b in zip(model.parameters(), twin.parameters()))
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    torch.testing.assert_close(twin(ids), model(ids), rtol=0, atol=0)  # on the CPU auto is sdpa
    assert twin.lm_head.weight is twin.model.embed_tokens.weight  # still tied
