"""bench/tuning_step_time.py runs end to end on the tiny model (the numbers are the bench's)."""

import importlib.util
from pathlib import Path

from vlseg.checkpoint import save_checkpoint
from vlseg.registry import build_model, model_config

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "tuning_step_time.py"


def test_step_time_bench_reports_a_ratio_per_method(tiny_data, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("tuning_step_time", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = model_config("tiny-test")
    base = save_checkpoint(build_model(cfg), cfg, tmp_path / "base")
    out = tmp_path / "st.json"
    res = bench.main(
        ["--data", str(tiny_data), "--model", str(base), "--methods", "coop", "vpt",
         "--rounds", "2", "--steps", "5", "--shots", "4", "--batch-size", "2", "--json", str(out)]
    )  # fmt: skip
    assert out.is_file() and len(res["rounds"]) == 2
    for name in ("coop", "vpt"):
        s = res["methods"][name]
        assert 0 < s["ratio_min"] <= s["ratio_median"] <= s["ratio_max"]
        ratios = [r[name] / r["full"] for r in res["rounds"]]
        assert s["ratio_min"] == min(ratios) and s["ratio_max"] == max(ratios)
    assert "| coop |" in capsys.readouterr().out
