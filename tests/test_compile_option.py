"""`trainer.compile=true` compiles the family's network in place, keeping checkpoint keys."""

from tests.tiny_run import TINY_MODEL
from train import build_module, load_config


def test_compile_wraps_the_network_without_renaming_its_weights():
    _, plain_cfg = load_config(TINY_MODEL)
    _, compiled_cfg = load_config(TINY_MODEL + ["trainer.compile=true"])
    plain, compiled = build_module(plain_cfg), build_module(compiled_cfg)
    assert plain.model._compiled_call_impl is None
    assert compiled.model._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(plain.state_dict())  # no `_orig_mod.` prefix
