"""The paper presets run end to end (tiny sizes) on a synthetic tree in the NYUv2 layout."""
from __future__ import annotations

import pytest

from okd.app import run
from okd.data.synthetic import write_layout
from okd.config import compose as compose_cfg

TINY_RESNET = ["backbone.pretrained=false", "backbone.depth=18", "backbone.width=0.0625", "backbone.layers=[1,1,1,1]",
               "backbone.aspp_channels=4", "trainer.epochs=1", "trainer.batch_size=4", "trainer.eval_batch_size=4",
               "trainer.num_workers=0", "trainer.progress=false", "trainer.log_images=0", "logger=none"]


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory):
    return write_layout(tmp_path_factory.mktemp("nyu"), "nyuv2", n_train=10, n_val=4, height=32, width=32)


@pytest.mark.parametrize("experiment, extra", [
    ("okd", ["kd.warmup_epochs=1"]),
    ("okd_no_otw", ["kd.warmup_epochs=0"]),
    ("stl_depth", []),
    ("mtan", ["backbone.layers=[2,2,2,2]"]),
])
def test_preset_runs(tmp_path, nyu_root, experiment, extra):
    cfg = compose_cfg([f"experiment={experiment}", f"dataset.root={nyu_root}", *TINY_RESNET, *extra])
    summary = run(cfg, tmp_path, choices={"backbone": cfg.hydra.runtime.choices["backbone"]})
    assert summary["dataset"] == "NYUv2" and summary["epochs"] == 1
    if experiment.startswith("okd"):
        assert summary["delta"]["base"]["source"].startswith("teachers")
