"""Two CPU processes under Lightning DDP (gloo): disjoint training samples, equal batch counts."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent('''
    import json, sys
    import lightning as L
    import torch
    from omegaconf import OmegaConf
    from configs.schema import TrackingDataConfig
    from datamodules.tracking import TrackingDataModule

    class Probe(L.LightningModule):
        def __init__(self, out):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.out, self.ids = out, []
        def training_step(self, batch, batch_idx):
            self.ids += [int(i) for i in batch["clip_id"]]
            return (self.w - batch["video"].mean() / 255) ** 2
        def on_train_end(self):
            with open(f"{self.out}/rank{self.global_rank}.json", "w") as f:
                json.dump({"ids": self.ids, "world": self.trainer.world_size}, f)
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    out, train = sys.argv[1], sys.argv[2:]
    cfg = OmegaConf.structured(TrackingDataConfig(clip_len=8, num_queries=16, batch_size=2, num_workers=1,
                                                  shuffle_buffer=2, batches_per_epoch=3))
    cfg.train_shards = ",".join(train)
    dm = TrackingDataModule(cfg)
    dm.train_urls = train
    dm.setup = lambda stage=None: None
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(Probe(out), datamodule=dm)
''')


@pytest.mark.slow
def test_two_process_ddp_reads_disjoint_samples_with_equal_batch_counts(tiny_shards, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), str(tmp_path), *tiny_shards["train"]], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    assert len(ranks[0]["ids"]) == len(ranks[1]["ids"]) == 2 * 3 * 2  # epochs x batches x batch size
    assert not set(ranks[0]["ids"]) & set(ranks[1]["ids"])
