"""State-dict and numerical compatibility with real timm.

``fixtures/timm_vit_fixture.pt`` was produced by ``fixtures/make_timm_fixture.py`` with timm itself (version in
the file): weights, inputs and timm's outputs.  Our models must load those weights strictly and give the same
numbers.
"""

import pytest
import torch

from conftest import load_fixture
from mawstron.core import create_vit, load_pretrained

FIXTURE = load_fixture("timm_vit_fixture.pt")


@pytest.mark.parametrize("case", sorted(FIXTURE["cases"]))
def test_timm_weights_give_timm_outputs(case):
    c = FIXTURE["cases"][case]
    model = create_vit("vit_micro", **c["kwargs"]).eval()
    report = load_pretrained(model, c["state_dict"])
    assert not report.missing and not report.unexpected and not report.dropped
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(c["input"]), c["features"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(c["input"]), c["output"], rtol=1e-5, atol=1e-6)


def test_position_embedding_resampled_as_timm_does():
    c = FIXTURE["cases"]["micro_token_head"]
    model = create_vit("vit_micro", **{**c["kwargs"], "img_size": 48}).eval()
    report = load_pretrained(model, c["state_dict"])
    assert report.resampled == ["pos_embed"]
    torch.testing.assert_close(model.pos_embed.detach(), c["resampled"]["pos_embed"], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(c["resampled"]["input"]), c["resampled"]["features"], rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("name", sorted(FIXTURE["layouts"]))
def test_paper_presets_have_timm_state_dict_layout(name):
    with torch.device("meta"):
        model = create_vit(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == FIXTURE["layouts"][name]
