"""One process of a data-parallel calibration, as lmms-eval runs it (tests/test_calibration_dp.py).

    python -m torch.distributed.run --nproc_per_node 2 tests/dp_calibrate_worker.py MODEL_DIR CALIB REPORT_DIR [fail]
    python tests/dp_calibrate_worker.py MODEL_DIR CALIB REPORT_DIR            # the one-process reference

It builds the ``mmtox`` lmms-eval wrapper with ``method=sgm`` and no ``glasses=`` (accelerate sets
up torch.distributed from the launcher's environment, as under ``accelerate launch -m lmms_eval``),
so the wrapper calibrates. Spies (the real functions still run) count what this process collected
and wrote; the counts go to ``REPORT_DIR/rank{R}.json``. ``fail``: process 1 raises while collecting;
``fail-rate``: process 0 raises while rating the neurons (after every row was gathered).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    model_dir, calib, report_dir = sys.argv[1:4]
    fail = sys.argv[4] if len(sys.argv) > 4 else None
    import mmtoxicqa.sgm.api as api
    import mmtoxicqa.sgm.calibration as calibration
    import mmtoxicqa.sgm.glasses as glasses_module
    import mmtoxicqa.sgm.shards as shards

    # Spies replace each function where it is called (the modules import their names at the top).

    seen = {"items": 0, "batches": 0, "saved": []}
    real_iter, real_save = calibration.iter_batches, glasses_module.save_glasses

    def counting_iter(loaded, items, *args, **kwargs):
        for batch in real_iter(loaded, items, *args, **kwargs):
            seen["batches"] += 1
            seen["items"] += int(batch["input_ids"].shape[0])
            yield batch

    def recording_save(glasses, path):
        seen["saved"].append(str(path))
        return real_save(glasses, path)

    calibration.iter_batches = counting_iter
    glasses_module.save_glasses = recording_save
    if fail == "fail-rate":

        def failing_rate(*args, **kwargs):
            raise RuntimeError("planted failure in process 0 while rating")

        api.rate_responses = shards.rate_responses = failing_rate
    if fail == "fail":
        real_collect = shards.collect

        def failing_collect(*args, **kwargs):
            import torch.distributed as dist

            if dist.is_initialized() and dist.get_rank() == 1:
                raise RuntimeError("planted failure in process 1")
            return real_collect(*args, **kwargs)

        api.collect = shards.collect = failing_collect

    from mmtoxicqa.model_wrappers.mmtox import MMTox

    wrapper = MMTox(pretrained=model_dir, device="cpu", method="sgm", calibration_data=calib)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    glasses = wrapper.method.glasses
    report = {
        "rank": rank,
        "world": world,
        "wrapper_rank": wrapper.rank,
        "wrapper_world_size": wrapper.world_size,
        **seen,
        "alpha_sha256": glasses.alpha_sha256(),
        "calibration_processes": glasses.meta.get("calibration_processes"),
        "cache": sorted(str(p) for p in (Path(os.environ["MMTOXICQA_CACHE"]) / "glasses").iterdir()),
    }
    Path(report_dir, f"rank{rank}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
