"""compose-batch in-process against a real ``loradex serve``: every result is written,
indexed in the registry and published to the hub by the driver, as ``loradex compose
--publish`` publishes one."""

from __future__ import annotations

from pathlib import Path

from tests.support.hub import HubServer, loradex
from tests.support.tiny_models import FEW_SHOT, save_lora, save_tiny_causal, write_jsonl


def test_compose_batch_publishes_each_result(hub: HubServer, tmp_path: Path) -> None:
    model = save_tiny_causal(tmp_path / "model", chat_template=None)
    for i in range(2):
        save_lora(model, tmp_path / "loras" / f"mod{i}", seed=i)
    write_jsonl(tmp_path / "few.jsonl", FEW_SHOT)
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"""
base_model: {model}
defaults: {{budget: 4}}
tasks:
  - {{name: batch-one, examples: few.jsonl, candidates: [loras/mod0, loras/mod1]}}
  - {{name: batch-two, examples: few.jsonl, candidates: [loras/mod1, loras/mod0], seed: 1}}
""")
    run = loradex("--db", hub.db_url, "--home", str(tmp_path / "home"), "compose-batch",
                  str(plan), "--publish", "alice",
                  env={"LORADEX_ENDPOINT": hub.url, "LORADEX_TOKEN": hub.alice}, timeout=600)
    for name in ("batch-one", "batch-two"):
        assert (tmp_path / "composed" / name / "adapter_model.safetensors").is_file()
        assert f"published alice/{name}" in run.stdout + run.stderr
    published = {m.id for m in hub.api().list_models(author="alice")}
    assert {"alice/batch-one", "alice/batch-two"} <= published
    assert "compose-batch: 2 unit(s) done, 0 failed" in run.stdout + run.stderr
