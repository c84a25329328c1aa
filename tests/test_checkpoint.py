"""final.pt: a plain state_dict torchvision loads, which also records the model it holds."""
import torch
import torchvision

from pipeline.checkpoint import load_weights, save_final_weights
from pipeline.models import build_model

SETTINGS = {"arch": "resnet18", "squeeze": "baseline", "reduction": 16, "num_classes": 1000, "blurpool": False}


def test_baseline_final_weights_load_into_torchvision_and_record_the_model(tmp_path):
    model = build_model("resnet18", "baseline").eval()
    save_final_weights(tmp_path / "final.pt", model, SETTINGS)
    reference = torchvision.models.resnet18().eval()
    reference.load_state_dict(torch.load(tmp_path / "final.pt"), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reference(x), model(x), rtol=0, atol=0)
    state, recorded = load_weights(tmp_path / "final.pt")
    assert recorded == SETTINGS and set(state) == set(model.state_dict())


def test_weights_without_a_record_still_load(tmp_path):
    model = build_model("resnet18", "gmp", num_classes=10)
    torch.save(model.state_dict(), tmp_path / "old.pt")  # final.pt as written before it recorded its model
    state, recorded = load_weights(tmp_path / "old.pt")
    assert recorded is None and set(state) == set(model.state_dict())
